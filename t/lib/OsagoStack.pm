package OsagoStack;

# The worker's test stack: real components on free loopback ports in temp dirs, each stopped by
# its own pid (and in DESTROY, and at exit through OsagoTest's registry).
#
#   use lib 't/lib'; use OsagoTest; use OsagoStack;
#   my $pg  = OsagoStack::Postgres->new;                       # role and database "osago"
#   my $r   = OsagoTest::Redis->new;
#   my $kb  = OsagoStack::Devbroker->new;                      # Kafka (librdkafka mock)
#   my $sim = OsagoStack::InsurerSim->new(insurers => 'alfa,ingos', latency => '20-50');
#   my $w   = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb,
#                                     insurers => $sim->insurers_file, migrate => 1);
#   my $id  = OsagoStack::intake_entry($r, partner => 'acme');
#   OsagoStack::wait_until(sub { ($pg->psql("SELECT status FROM applications WHERE id='$id'"))[0]
#                                eq 'completed' }, 30);
#   $w->stop;                                                   # two tests: exit 0, no ASan report
#
# Interface:
#   OsagoStack::Postgres    new(%opt) port conninfo psql($sql) rows($sql) stop start restart dir
#                           log running pid
#   OsagoStack::Devbroker   new(args => [..]) bootstrap port control($cmd) stop log pid running
#   OsagoStack::InsurerSim  new(insurers => 'a,b' | [..], latency => '20-50',
#                           opts => ['CODE:k=v,..', ..] | {CODE => 'k=v,..'}, hold_ms, seed,
#                           timeouts => {CODE => ms}) port url insurers insurers_file
#                           write_insurers($path, timeouts => {..}, add => [..]) stop log
#   OsagoStack::Worker      new(pg, redis, kafka, insurers (file or InsurerSim), roles, name,
#                           args => [..], env => {..}, migrate => 0|1, wait => 'healthz'|'readyz'|0)
#                           pid port url name log_text log_lines metrics metric($short, %labels)
#                           healthz readyz kill($sig) wait_exit($s) stop (2 tests) running
#                           class: bin migrate($pg, %opt) -> (code, stdout, stderr)
#   OsagoStack::RedisWatch  new($redis, 'SUBSCRIBE', $channel) | new($redis, 'MONITOR'):
#                           a child process recording what one connection receives;
#                           messages (SUBSCRIBE) monitor (MONITOR) stop
#   OsagoStack::TcpProxy    new(to => $port): forwards a free loopback port to $port, in a child;
#                           hang (its connections closed, new ones accepted and never answered)
#                           pass (forwarding again) reset (its connections closed)
#                           held (connections held unanswered) stall (its connections
#                           kept open, nothing forwarded, new ones held) port stop
#                           conninfo($pg, connect_timeout => S) ($pg's, through the proxy)
#   OsagoStack::Markers     new($devbroker, $topic, partitions => 4): one undecodable message per
#                           partition, to see where a consumer group's offsets stand;
#                           produce($label) read_by($worker) assigned($worker)
#                           check_fresh_member($worker, \@read_before) (a test per
#                           partition, then four)
#   replicate($replica, $primary, port => P, what => '...') (one test)
#   intake_entry($redis, %fields) -> app id (list: app id, stream entry id, payload, trace)
#   intake_entries($redis, $n, %fields) -> app ids (one MULTI/EXEC: read in one batch)
#   raw_entry($redis, field => value, ...) -> stream entry id (no read model)
#   uuid7([$ms]) traceparent() canonical_payload(%overrides) wait_until($cond, $timeout, $step)
#   kafka_messages($devbroker, $topic) pending_count($redis) pending_by_consumer($redis)
#   need_bins(@names) (dies when a binary is missing)
#   roles_behind_proxies($pg, \%common, $prefix, %conninfo) -> (\%proxy, \%worker) by front role
#   wait_logged($worker, $from_line, $secs, sub { $line }) stops_promptly($worker, $what,
#   $log_role, qr/msg/) (2 tests, and the stop's)
#   worker_flags(stale_after_s => 3, ...) -> the worker's flags (worker/config.h field names)
#   OsagoStack::FakeInsurer new(code, mode => 'status'|'hang'|'garbage'|'ok', status, delay_s)
#                           url entry calls (every call recorded: t, traceparent, body, ...)
#   completed_count/wait_completed($pg, \@ids, $s) quotes_of($pg, \@ids) application($pg, $id)
#   read_model($redis, $id) check_all_done($pg, $redis, \@ids, \@codes, $name) (a subtest:
#   nothing lost, nothing duplicated) metric_of($parsed_metrics, 'short_name', %labels)

use strict;
use warnings;

use Carp qw(croak);
use File::Path qw(remove_tree);
use File::Spec;
use IO::Select;
use IO::Socket::IP;
use JSON::PP ();
use POSIX qw(:sys_wait_h);
use Time::HiRes qw(time sleep);

use OsagoTest;
use OsagoIntake ();

our $JSON  = JSON::PP->new->canonical->utf8;
our $GROUP = 'osago-worker';
our $STREAM = 'osago:intake';

# --- helpers -----------------------------------------------------------------------------------

# build/NAME (non-sanitizer tools) or build/san/NAME, whichever exists.
sub tool_bin {
    my ($name) = @_;
    for my $p (File::Spec->catfile(OsagoTest::build_dir(), $name),
               File::Spec->catfile(OsagoTest::build_dir(), 'san', $name)) {
        return $p if -x $p;
    }
    return undef;
}

sub worker_bin { File::Spec->catfile(OsagoTest::build_dir(), 'san', 'osago-worker') }

# Dies (like t/50 and t/51) when a binary or tool is missing, saying how to build it: a test
# that cannot run must not pass.
sub need_bins {
    my (@names) = @_;
    my @missing;
    for my $n (@names) {
        if ($n eq 'osago-worker') { push @missing, worker_bin() unless -x worker_bin() }
        else { push @missing, $n unless tool_bin($n) }
    }
    my ($kc) = OsagoTest::run_cmd('sh', '-c', 'command -v kcat');
    push @missing, 'kcat (apt-get install kcat)' if $kc;
    push @missing, 'PostgreSQL (initdb, in /usr/lib/postgresql/N/bin)' unless -x "$OsagoStack::Postgres::PGBIN/initdb";
    return unless @missing;
    die 'not built/installed: ' . join(', ', @missing)
        . " (make build/devbroker build/insurer-sim build/san/osago-worker)\n";
}

sub wait_until { OsagoTest::wait_for(@_) }

# The worker's tuning flags (worker/config.h), by the name of their configuration field:
# worker_flags(stale_after_s => 3, sweep_interval_s => 1) -> ('--stale-after', 3, ...)
our %WORKER_FLAG = (
    kafka_session_timeout_ms => '--kafka-session-timeout-ms',
    kafka_fetch_wait_ms      => '--kafka-fetch-wait-ms',
    pg_answer_timeout_ms     => '--pg-answer-timeout-ms',
    insurer_timeout_ms       => '--insurer-timeout-ms',
    max_attempts             => '--max-attempts',
    retry_base_ms            => '--retry-base-ms',
    retry_max_ms             => '--retry-max-ms',
    max_in_flight            => '--max-in-flight',
    insurer_share_pct        => '--insurer-share-pct',
    sweep_interval_s         => '--sweep-interval-s',
    stale_after_s            => '--stale-after-s',
    redrive_after_s          => '--redrive-after-s',
    heartbeat_s              => '--heartbeat-s',
    claim_idle_ms            => '--claim-idle-ms',
    app_ttl_s                => '--app-ttl-s',
    log_level                => '--log-level',
);

sub worker_flags {
    my (%o) = @_;
    return map { ($WORKER_FLAG{$_} // croak("no worker flag for $_"), $o{$_}) } sort keys %o;
}

sub uuid7 {
    my ($ms) = @_;    # the time it carries: now unless given
    $ms //= int(time * 1000);
    my @r = map { int rand 256 } 1 .. 10;
    my $hex = sprintf '%012x', $ms;
    my $rand = join '', map { sprintf '%02x', $_ } @r;
    # version 7, variant 10xx
    my $a = sprintf '7%03x', hex(substr($rand, 0, 4)) & 0xfff;
    my $b = sprintf '%04x', (hex(substr($rand, 4, 4)) & 0x3fff) | 0x8000;
    return join '-', substr($hex, 0, 8), substr($hex, 8, 4), $a, $b, substr($rand, 8, 12);
}

sub traceparent {
    my $t = join '', map { sprintf '%02x', int rand 256 } 1 .. 16;
    my $s = join '', map { sprintf '%02x', int rand 256 } 1 .. 8;
    return "00-$t-$s-01";
}

# The canonical form the edge stores: compact JSON, members sorted by name at every level.
sub canonical_payload { $JSON->encode(OsagoIntake::app_data(@_)) }

sub _iso_ms {
    my ($ms) = @_;
    my @t = gmtime(int($ms / 1000));
    return sprintf '%04d-%02d-%02dT%02d:%02d:%02d.%03dZ', $t[5] + 1900, $t[4] + 1, $t[3],
        $t[2], $t[1], $t[0], $ms % 1000;
}

# One test: $replica replicates $primary, through port => P when given (a proxy that can lag).
# Redis 7 waits 5 s before a full sync to a new replica (for more to join): that wait would race
# the tests' own, so it is turned off.
sub replicate {
    my ($replica, $primary, %o) = @_;
    $_->cli('CONFIG', 'SET', 'repl-diskless-sync-delay', '0') for $primary, $replica;
    Test::More::is($replica->cli('REPLICAOF', '127.0.0.1', $o{port} // $primary->port), 'OK',
                   $o{what} // 'the standby replicates the primary');
}

# intake_entry($redis, app_id => .., partner => 'acme', payload => string | hashref of
# app_data overrides, trace => ..): what the edge's intake script does for an accepted
# application: the read model osago:app:{id} ({id, status accepted, created_at, updated_at,
# insurers []}, owner, updated_at; 7-day TTL) and the stream entry (app_id, partner, payload,
# trace), in one MULTI/EXEC.
sub intake_entry {
    my ($redis, %f) = @_;
    my $id      = $f{app_id}  // uuid7();
    my $partner = $f{partner} // 'acme';
    my $payload = $f{payload};
    $payload = canonical_payload(%{ $payload || {} }) unless defined $payload && !ref $payload;
    my $trace   = $f{trace} // traceparent();
    my $ms      = int(time * 1000);
    my $doc = qq({"id":"$id","status":"accepted","created_at":") . _iso_ms($ms)
            . qq(","updated_at":$ms,"insurers":[]});
    my $replies = resp_pipeline($redis,
        [ 'MULTI' ],
        [ 'HSET', "osago:app:$id", 'doc', $doc, 'owner', $partner, 'updated_at', $ms ],
        [ 'EXPIRE', "osago:app:$id", 7 * 86400 ],
        [ 'XADD', $STREAM, '*', 'app_id', $id, 'partner', $partner, 'payload', $payload,
          'trace', $trace ],
        [ 'EXEC' ]);
    my $exec = $replies->[-1];
    croak "intake_entry: EXEC failed: " . $JSON->encode($replies) unless ref $exec eq 'ARRAY';
    my $entry = $exec->[2];
    return wantarray ? ($id, $entry, $payload, $trace) : $id;
}

# intake_entries($redis, $n, %fields): $n applications in one MULTI/EXEC, so that a reader
# blocked on the stream gets them in one batch. Returns the app ids.
sub intake_entries {
    my ($redis, $n, %f) = @_;
    my (@cmds, @ids);
    for (1 .. $n) {
        my $id = uuid7();
        push @ids, $id;
        my $payload = canonical_payload(%{ $f{payload} || {} });
        my $ms = int(time * 1000);
        my $doc = qq({"id":"$id","status":"accepted","created_at":") . _iso_ms($ms)
                . qq(","updated_at":$ms,"insurers":[]});
        push @cmds, [ 'HSET', "osago:app:$id", 'doc', $doc, 'owner', $f{partner} // 'acme',
                      'updated_at', $ms ],
                    [ 'EXPIRE', "osago:app:$id", 7 * 86400 ],
                    [ 'XADD', $STREAM, '*', 'app_id', $id, 'partner', $f{partner} // 'acme',
                      'payload', $payload, 'trace', traceparent() ];
    }
    my $replies = resp_pipeline($redis, [ 'MULTI' ], @cmds, [ 'EXEC' ]);
    croak 'intake_entries: EXEC failed' unless ref $replies->[-1] eq 'ARRAY';
    return @ids;
}

# raw_entry($redis, field => value, ...): an arbitrary (e.g. malformed) stream entry.
sub raw_entry {
    my ($redis, @kv) = @_;
    my $r = OsagoIntake::resp($redis, 'XADD', $STREAM, '*', @kv);
    croak "raw_entry: " . $JSON->encode($r) if ref $r;
    return $r;
}

# Several commands over one connection; the replies as Perl data (see OsagoIntake::resp).
sub resp_pipeline {
    my ($redis, @cmds) = @_;
    my $s = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $redis->port, Proto => 'tcp',
                                Timeout => 3) or croak "resp_pipeline: connect: $!";
    binmode $s;
    my $out = '';
    for my $c (@cmds) {
        $out .= '*' . @$c . "\r\n";
        $out .= '$' . length($_) . "\r\n$_\r\n" for @$c;
    }
    print {$s} $out;
    my $buf = '';
    my $sel = IO::Select->new($s);
    my $read = sub {
        my ($want) = @_;
        while (1) {
            if (defined $want) { return substr($buf, 0, $want, '') if length $buf >= $want }
            elsif ($buf =~ s/^(.*?)\r\n//s) { return $1 }
            $sel->can_read(5) or croak 'resp_pipeline: timeout';
            sysread($s, $buf, 65536, length $buf) or croak 'resp_pipeline: closed';
        }
    };
    my $parse;
    $parse = sub {
        my $line = $read->(undef);
        my ($t, $rest) = (substr($line, 0, 1), substr($line, 1));
        return $rest if $t eq '+';
        return { error => $rest } if $t eq '-';
        return $rest + 0 if $t eq ':';
        if ($t eq '$') { return undef if $rest < 0; return substr($read->($rest + 2), 0, $rest) }
        if ($t eq '*') { return undef if $rest < 0; return [ map { $parse->() } 1 .. $rest ] }
        croak "resp_pipeline: unexpected '$line'";
    };
    my @replies = map { $parse->() } @cmds;
    close $s;
    return \@replies;
}

# Each front role (relay, orchestrator, results, sweeper) in a worker of its own behind a
# TcpProxy of its own to $pg, at debug level (a sweep a second): (\%proxy, \%worker) by role.
# %conninfo: TcpProxy::conninfo's options (connect_timeout => S).
sub roles_behind_proxies {
    my ($pg, $common, $prefix, %conninfo) = @_;
    my (%proxy, %w);
    for my $role (qw(relay orchestrator results sweeper)) {
        $proxy{$role} = OsagoStack::TcpProxy->new(to => $pg->port);
        $w{$role} = OsagoStack::Worker->new(
            %$common, pg => $proxy{$role}->conninfo($pg, %conninfo), name => "$prefix-$role",
            roles => $role,
            args => [ '--log-level', 'debug',
                      $role eq 'sweeper' ? worker_flags(sweep_interval_s => 1) : () ]);
    }
    return (\%proxy, \%w);
}

# Waits (up to $secs) for a log line of $worker, from line $from on, that $match accepts.
sub wait_logged {
    my ($worker, $from, $secs, $match) = @_;
    return wait_until(sub {
        my @lines = @{ $worker->log_lines };
        grep { $match->($_) } @lines[ $from .. $#lines ];
    }, $secs, 0.05);
}

# Stops a role waiting on PostgreSQL (10 s at most) and checks, in two tests, that it took less
# than 3 s and logged what it gave up (pg_abandoned, its log role, a message matching $msg).
sub stops_promptly {
    my ($worker, $what, $log_role, $msg) = @_;
    my $t0 = time;
    $worker->stop(timeout => 10);
    my $took = time - $t0;
    Test::More::cmp_ok($took, '<', 3, sprintf('  %s stopped while it waits: %.1f s', $what, $took));
    Test::More::ok((grep { ($_->{event} // '') eq 'pg_abandoned' && ($_->{role} // '') eq $log_role
                           && ($_->{msg} // '') =~ ($msg // qr//) } @{ $worker->log_lines }),
                   "  $what says what it abandoned (pg_abandoned, role $log_role)")
        or Test::More::diag(substr($worker->log_text, -2000));
}

# Entries of the worker's consumer group delivered and not acknowledged (0 without a group).
sub pending_count {
    my ($redis) = @_;
    my $r = eval { OsagoIntake::resp($redis, 'XPENDING', $STREAM, $GROUP) };
    return 0 unless ref $r eq 'ARRAY';
    return $r->[0] // 0;
}

# { consumer => pending count }
sub pending_by_consumer {
    my ($redis) = @_;
    my $r = eval { OsagoIntake::resp($redis, 'XPENDING', $STREAM, $GROUP) };
    return {} unless ref $r eq 'ARRAY' && ref $r->[3] eq 'ARRAY';
    return { map { $_->[0] => $_->[1] } @{ $r->[3] } };
}

# Every message of a topic, from the beginning, with kcat (its own plain consumer: no group):
# [ {partition, offset, key, headers => {name => value}, payload (bytes), event (decoded or undef)} ]
sub kafka_messages {
    my ($broker, $topic, %o) = @_;
    my ($code, $out, $err) = OsagoTest::run_cmd('timeout', $o{timeout} // 30, 'kcat', '-b',
        $broker->bootstrap, '-C', '-t', $topic, '-o', 'beginning', '-e', '-q', '-J',
        '-X', 'topic.metadata.refresh.interval.ms=1000');
    my @m;
    for my $line (split /\n/, $out) {
        my $j = eval { $JSON->decode($line) } or next;
        my %h;
        if (ref $j->{headers} eq 'ARRAY') {
            my @h = @{ $j->{headers} };
            while (@h) { my ($k, $v) = splice @h, 0, 2; $h{$k} = $v }
        }
        my $ev = defined $j->{payload} ? eval { JSON::PP->new->decode($j->{payload}) } : undef;
        push @m, { partition => $j->{partition}, offset => $j->{offset}, key => $j->{key},
                   headers => \%h, payload => $j->{payload}, event => $ev };
    }
    Test::More::diag("kcat $topic: exit $code: $err") if $code && $o{verbose};
    return \@m;
}

# Starts a program with stdout on a pipe (to wait for a ready line) or a file, stderr in a file.
# Returns (pid, read end of the pipe).
sub _spawn {
    my (%o) = @_;
    my ($r, $w);
    pipe($r, $w) or croak "pipe: $!" if $o{ready};
    my $pid = fork // croak "fork: $!";
    if ($pid == 0) {
        close $r if $r;
        $SIG{$_} = 'DEFAULT' for qw(INT TERM HUP PIPE CHLD);
        open STDIN, '<', '/dev/null';
        if ($w) { open STDOUT, '>&', $w or POSIX::_exit(127) }
        else    { open STDOUT, '>>', $o{stdout} // '/dev/null' or POSIX::_exit(127) }
        open STDERR, '>>', $o{stderr} or POSIX::_exit(127);
        $ENV{$_} = $o{env}{$_} for keys %{ $o{env} || {} };
        { exec { $o{cmd}[0] } @{ $o{cmd} } };
        POSIX::_exit(127);
    }
    close $w if $w;
    return ($pid, $r);
}

# Reads from $fh until a line matches $re (or the timeout); returns what was read.
sub _read_ready {
    my ($fh, $re, $timeout) = @_;
    my $buf = '';
    my $sel = IO::Select->new($fh);
    my $deadline = time + $timeout;
    while (time < $deadline && $buf !~ $re) {
        last unless $sel->can_read($deadline - time);
        sysread($fh, $buf, 4096, length $buf) or last;
    }
    return $buf;
}

# Stops a child of ours by pid: $sig, wait up to $timeout, then SIGKILL. Returns its wait status
# ($?), or undef if it had already been reaped.
sub _stop_child {
    my ($pid, $sig, $timeout) = @_;
    return undef unless $pid;
    kill $sig, $pid;
    my $status;
    my $done = OsagoTest::wait_for(sub {
        my $r = waitpid($pid, WNOHANG);
        if ($r == $pid) { $status = $?; return 1 }
        return $r == -1;
    }, $timeout, 0.02);
    unless ($done) {
        kill 'KILL', $pid;
        waitpid($pid, 0);
        $status = $?;
    }
    return $status;
}

# --- PostgreSQL --------------------------------------------------------------------------------

package OsagoStack::Postgres;

use strict;
use warnings;
use Carp qw(croak);
use File::Path qw(remove_tree);
use Time::HiRes qw(time sleep);

# the newest installed server (Debian 12: 15)
our $PGBIN = $ENV{OSAGO_PGBIN}
    || (sort { ($a =~ m{/(\d+)/bin$})[0] <=> ($b =~ m{/(\d+)/bin$})[0] }
        grep { -x "$_/initdb" } glob '/usr/lib/postgresql/*/bin')[-1]
    || '/usr/lib/postgresql/15/bin';

# new(port => P, settings => ['-c x=y', ...]): initdb into a temp dir (as postgres when the
# tests run as root, which initdb refuses to be; as the tests' own user otherwise), start on a
# free port, create role osago and database osago.
sub new {
    my ($class, %opt) = @_;
    my $dir = OsagoTest::_tempdir('pg');     # 0755 under /tmp (o+x all the way)
    if ($> == 0) {
        my ($uid, $gid) = (getpwnam('postgres'))[2, 3];
        croak 'no postgres user' unless defined $uid;
        chown $uid, $gid, $dir or croak "chown $dir: $!";
    }
    my $self = bless { dir => $dir, port => $opt{port} // OsagoTest::free_port(), opt => \%opt,
                       owner => $$ }, $class;
    OsagoTest::_register($self);
    my ($code, $out, $err) = $self->_as_postgres("$PGBIN/initdb", '-D', "$dir/data", '-A', 'trust',
                                                 '-U', 'postgres', '--no-sync', '-E', 'UTF8',
                                                 '--locale', 'C');
    croak "initdb failed ($code): $out$err" if $code;
    $self->start;
    for my $sql ('CREATE ROLE osago LOGIN', 'CREATE DATABASE osago OWNER osago') {
        my ($c, $o, $e) = OsagoTest::run_cmd('psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1',
            '-h', '127.0.0.1', '-p', $self->{port}, '-U', 'postgres', '-d', 'postgres', '-c', $sql);
        croak "psql '$sql' failed ($c): $o$e" if $c;
    }
    return $self;
}

sub _as_postgres {
    my ($self, @cmd) = @_;
    return OsagoTest::run_cmd($> == 0 ? ('runuser', '-u', 'postgres', '--') : (), @cmd);
}

sub port     { $_[0]{port} }
sub dir      { $_[0]{dir} }
sub conninfo { "host=127.0.0.1 port=$_[0]{port} dbname=osago user=osago connect_timeout=2" }
sub log      { OsagoTest::_slurp("$_[0]{dir}/postgres.log") }

sub pid {
    my ($self) = @_;
    my ($pid) = OsagoTest::_slurp("$self->{dir}/data/postmaster.pid") =~ /^(\d+)/;
    return $pid;
}

sub running { my $p = $_[0]{pid}; $p && OsagoTest::pid_alive($p) }

sub start {
    my ($self) = @_;
    croak "postgres already running (pid $self->{pid})" if $self->running;
    my $o = join ' ', '-c listen_addresses=127.0.0.1', "-p $self->{port}", "-k $self->{dir}",
                      '-c fsync=off', '-c synchronous_commit=off', '-c full_page_writes=off',
                      '-c max_connections=200', @{ $self->{opt}{settings} || [] };
    my ($code, $out, $err) = $self->_as_postgres("$PGBIN/pg_ctl", '-D', "$self->{dir}/data",
        '-l', "$self->{dir}/postgres.log", '-w', '-t', '30', '-o', $o, 'start');
    croak "pg_ctl start failed ($code): $out$err\n" . $self->log if $code;
    $self->{pid} = $self->pid;
    my $ok = OsagoTest::wait_for(sub { OsagoTest::port_open($self->{port}) }, 10);
    croak "postgres is not accepting on $self->{port}\n" . $self->log unless $ok;
    return $self;
}

# Fast shutdown (clients are disconnected), waits; by pid if pg_ctl does not manage.
sub stop {
    my ($self) = @_;
    my $pid = $self->{pid} // $self->pid or return;
    if (OsagoTest::pid_alive($pid)) {
        $self->_as_postgres("$PGBIN/pg_ctl", '-D', "$self->{dir}/data", '-m', 'fast', '-w',
                            '-t', '20', 'stop');
        unless (OsagoTest::wait_for(sub { !OsagoTest::pid_alive($pid) }, 10)) {
            kill 'QUIT', $pid;
            OsagoTest::wait_for(sub { !OsagoTest::pid_alive($pid) }, 5) or kill 'KILL', $pid;
            OsagoTest::wait_for(sub { !OsagoTest::pid_alive($pid) }, 5);
        }
    }
    OsagoTest::wait_for(sub { !OsagoTest::port_open($self->{port}) }, 2);
    delete $self->{pid};
}

sub restart { my ($self) = @_; $self->stop; $self->start }

# psql($sql, db => 'osago', user => 'osago'): rows as 'a|b|c' strings (psql -At -F '|').
# On an error: warns and returns an empty list; the error stays in last_error.
sub psql {
    my ($self, $sql, %o) = @_;
    my ($code, $out, $err) = OsagoTest::run_cmd('psql', '-X', '-q', '-A', '-t', '-F', '|',
        '-v', 'ON_ERROR_STOP=1', '-h', '127.0.0.1', '-p', $self->{port},
        '-U', $o{user} // 'osago', '-d', $o{db} // 'osago', '-c', $sql);
    if ($code) {
        $self->{last_error} = $err || "psql exit $code";
        Test::More::diag("psql: $sql: $self->{last_error}") unless $o{quiet};
        return;
    }
    delete $self->{last_error};
    my @rows = split /\n/, $out;
    return wantarray ? @rows : $rows[0];
}

sub last_error { $_[0]{last_error} }

# Another session holds the rows of $table (quotes unless given) WHERE $where locked (FOR UPDATE)
# for $secs: returns its psql's pid once the lock is taken (its pg_sleep shows in
# pg_stat_activity), undef if it was not.
sub hold_lock {
    my ($self, $where, $secs, $table) = @_;
    $table //= 'quotes';
    my $out = "$self->{dir}/lock-" . ++$self->{locks} . '.out';
    my ($pid) = OsagoStack::_spawn(
        cmd => [ 'psql', '-X', '-q', '-h', '127.0.0.1', '-p', $self->{port}, '-U', 'osago',
                 '-d', 'osago', '-c', "BEGIN; SELECT 1 FROM $table WHERE $where FOR UPDATE;"
                                      . " SELECT pg_sleep($secs); COMMIT;" ],
        stderr => $out, stdout => $out);
    my $held = OsagoTest::wait_for(sub {
        scalar $self->psql("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'PgSleep'",
                           quiet => 1) }, 5, 0.02);
    return $held ? $pid : undef;
}

# rows($sql): [ [col, col, ...], ... ]
sub rows {
    my ($self, $sql, %o) = @_;
    return [ map { [ split /\|/, $_, -1 ] } $self->psql($sql, %o) ];
}

sub DESTROY {
    my ($self) = @_;
    return unless $self->{owner} && $self->{owner} == $$;
    local ($?, $!, $@);
    eval { $self->stop };
    remove_tree($self->{dir}) if $self->{dir} && -d $self->{dir} && !$ENV{OSAGO_KEEP};
}

# --- devbroker (Kafka) -------------------------------------------------------------------------

package OsagoStack::Devbroker;

use strict;
use warnings;
use Carp qw(croak);
use File::Path qw(remove_tree);
use IO::Select;
use IO::Socket::IP;

sub new {
    my ($class, %opt) = @_;
    my $bin = OsagoStack::tool_bin('devbroker') or croak 'devbroker not built (make build/devbroker)';
    my $dir = OsagoTest::_tempdir('devbroker');
    my $self = bless { dir => $dir, owner => $$ }, $class;
    OsagoTest::_register($self);
    my $out;
    # a free port can be taken by a test running beside this one before devbroker binds it
    for my $try (1 .. 5) {
        $self->{port} = $opt{port} // OsagoTest::free_port();
        $self->{control_port} = OsagoTest::free_port();
        my ($pid, $r) = OsagoStack::_spawn(
            cmd => [ $bin, '--listen', "127.0.0.1:$self->{port}",
                     '--control', "127.0.0.1:$self->{control_port}", @{ $opt{args} || [] } ],
            stderr => "$dir/devbroker.log", ready => 1);
        $self->{pid} = $pid;
        $self->{rpipe} = $r;
        $out = OsagoStack::_read_ready($r, qr/\n/, 20);
        last if $out =~ /^devbroker: ready/ || $opt{port} || $self->log !~ /Address already in use/;
        $self->stop;
    }
    croak "devbroker did not start: $out\n" . $self->log
        unless $out =~ /^devbroker: ready bootstrap=(\S+)/;
    $self->{bootstrap} = $1;
    return $self;
}

sub bootstrap    { $_[0]{bootstrap} }
sub port         { $_[0]{port} }
sub control_port { $_[0]{control_port} }
sub pid          { $_[0]{pid} }
sub log          { OsagoTest::_slurp("$_[0]{dir}/devbroker.log") }
sub running      { my $p = $_[0]{pid}; $p && kill(0, $p) && waitpid($p, POSIX::WNOHANG()) == 0 }

# control('broker down 1') -> the answer line ('ok' or 'error: ...')
sub control {
    my ($self, $cmd) = @_;
    my $s = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $self->{control_port},
                                Proto => 'tcp', Timeout => 3) or return "error: connect: $!";
    print {$s} "$cmd\n";
    my $buf = '';
    my $sel = IO::Select->new($s);
    while ($buf !~ /\n/) {
        last unless $sel->can_read(10);
        sysread($s, $buf, 4096, length $buf) or last;
    }
    close $s;
    $buf =~ s/\r?\n.*//s;
    return $buf;
}

sub stop {
    my ($self) = @_;
    my $pid = delete $self->{pid} or return;
    $self->{status} = OsagoStack::_stop_child($pid, 'TERM', 10);
    close $self->{rpipe} if $self->{rpipe};
    delete $self->{rpipe};
    return $self->{status};
}

sub DESTROY {
    my ($self) = @_;
    return unless $self->{owner} && $self->{owner} == $$;
    local ($?, $!, $@);
    eval { $self->stop };
    remove_tree($self->{dir}) if $self->{dir} && -d $self->{dir} && !$ENV{OSAGO_KEEP};
}

# --- markers: where a consumer group's offsets stand ---------------------------------------------

package OsagoStack::Markers;

# A message no role can decode, produced on every partition of a topic: each member that reads
# one logs it (event_invalid, with its partition and offset), so a member's log shows how far it
# read, and a member reading one twice shows the group's offsets went back.

use strict;
use warnings;

sub new {
    my ($class, $kb, $topic, %o) = @_;
    return bless { kb => $kb, topic => $topic, partitions => $o{partitions} // 4 }, $class;
}

sub produce {
    my ($self, $label) = @_;
    for my $p (0 .. $self->{partitions} - 1) {
        my ($code, undef, $err) = OsagoTest::kcat($self->{kb}->bootstrap,
                                                  \"not an event ($label)\n", '-P',
                                                  '-t', $self->{topic}, '-p', $p);
        Test::More::is($code, 0, "marker $label produced on partition $p")
            or Test::More::diag($err);
    }
}

# "partition:offset" of every message of the topic the worker could not decode (the executor's
# lines name no topic: it reads one)
sub read_by {
    my ($self, $w) = @_;
    return map { $_->{msg} =~ /^(?:\Q$self->{topic}\E )?\[(\d+)\] offset (\d+) / ? "$1:$2" : () }
           grep { ($_->{event} // '') eq 'event_invalid' } @{ $w->log_lines };
}

# the worker's log lines saying it was given partitions of the topic
sub assigned {
    my ($self, $w) = @_;
    return grep { ($_->{event} // '') eq 'partitions_assigned'
                  && ($_->{msg} // '') =~ /\Q$self->{topic}\E \[/ } @{ $w->log_lines };
}

# $w, alone in its group once the others stopped, reads a new marker on every partition and
# none of @$before (markers read by the others): the group's offsets never went back.
sub check_fresh_member {
    my ($self, $w, $before) = @_;
    my $n = $self->{partitions};
    Test::More::ok(OsagoStack::wait_until(sub { $self->assigned($w) }, 15, 0.1),
                   "$w->{name} joined alone and was given every partition");
    $self->produce('fresh');
    Test::More::ok(OsagoStack::wait_until(sub { $self->read_by($w) >= $n }, 15, 0.1),
                   "$w->{name} read every partition up to the new marker");
    Time::HiRes::sleep(0.5);    # anything more it would read
    my %before = map { $_ => 1 } @$before;
    my @read = $self->read_by($w);
    Test::More::is_deeply([ grep { $before{$_} } @read ], [],
                          "$w->{name} read no marker from before: the offsets never went back")
        or Test::More::diag(Test::More::explain({ before => $before, read => \@read }));
    Test::More::is(scalar @read, $n, "  $w->{name} read each new marker once");
}

# --- a TCP proxy that can go silent ---------------------------------------------------------------

package OsagoStack::TcpProxy;

# A server that takes connections and never answers (a stalled or partitioned PostgreSQL) is
# what no real component does on demand: this proxy forwards until told to hang, then closes
# what it carries and holds every new connection unanswered until told to pass again.

use strict;
use warnings;
use Carp qw(croak);
use IO::Select;
use IO::Socket::IP;
use Socket qw(AF_UNIX SOCK_STREAM PF_UNSPEC);

sub new {
    my ($class, %opt) = @_;
    my $listen = IO::Socket::IP->new(LocalHost => '127.0.0.1', LocalPort => 0, Listen => 128,
                                      Proto => 'tcp', ReuseAddr => 1) or croak "listen: $!";
    socketpair(my $ctl, my $child_ctl, AF_UNIX, SOCK_STREAM, PF_UNSPEC) or croak "socketpair: $!";
    my $pid = fork // croak "fork: $!";
    if ($pid == 0) {
        $SIG{$_} = 'DEFAULT' for qw(INT TERM HUP CHLD);
        $SIG{PIPE} = 'IGNORE';
        close $ctl;
        _serve($listen, $child_ctl, $opt{to});
        POSIX::_exit(0);
    }
    my $self = bless { pid => $pid, port => $listen->sockport, ctl => $ctl, owner => $$ }, $class;
    close $listen;
    close $child_ctl;
    $ctl->autoflush(1);
    OsagoTest::_register($self);
    return $self;
}

sub port  { $_[0]{port} }

# $pg's conninfo through this proxy; connect_timeout => S replaces the test default of 2 s.
sub conninfo {
    my ($self, $pg, %o) = @_;
    (my $c = $pg->conninfo) =~ s/\bport=\d+/port=$self->{port}/;
    $c =~ s/\bconnect_timeout=\d+/connect_timeout=$o{connect_timeout}/ if $o{connect_timeout};
    return $c;
}

sub hang  { $_[0]->_say('hang') }
sub pass  { $_[0]->_say('pass') }
sub reset { $_[0]->_say('reset') }    # its connections closed; new ones as before
sub held  { $_[0]->_say('held') }     # how many connections it holds unanswered
sub stall { $_[0]->_say('stall') }    # its connections kept open, nothing forwarded any more
# new connections go to another port from now on; those open keep theirs (a moved virtual IP)
sub to    { $_[0]->_say("to $_[1]") }

# The child answers once the mode has changed, so what follows sees the new mode.
sub _say {
    my ($self, $mode) = @_;
    print { $self->{ctl} } "$mode\n";
    my $sel = IO::Select->new($self->{ctl});
    croak "proxy: no answer to $mode" unless $sel->can_read(5);
    my $ack = readline $self->{ctl};
    croak "proxy: $mode: " . ($ack // 'closed') unless defined $ack && $ack =~ /^ok(?: (\d+))?\n\z/;
    return $1 // 1;
}

sub _serve {
    my ($listen, $ctl, $to) = @_;
    my ($mode, %peer, %sock, @held) = ('pass');
    my $sel = IO::Select->new($listen, $ctl);
    my $drop = sub {
        for my $s (@_) {
            next unless $s;
            $sel->remove($s);
            delete $peer{ fileno $s };
            delete $sock{ fileno $s };
            close $s;
        }
    };
    for (;;) {
        for my $s ($sel->can_read(1)) {
            if ($s == $ctl) {
                my $cmd = readline $ctl;
                return unless defined $cmd;     # the test is gone
                chomp $cmd;
                if ($cmd eq 'held') {
                    print {$ctl} 'ok ' . scalar(@held) . "\n";
                    $ctl->flush;
                    next;
                }
                if ($cmd =~ /^to (\d+)\z/) {
                    $to = $1;
                    print {$ctl} "ok\n";
                    $ctl->flush;
                    next;
                }
                if ($cmd eq 'stall') {          # open and silent, like a hung server
                    $sel->remove($_) for values %sock;
                    push @held, values %sock;
                    %sock = %peer = ();
                    $mode = 'hang';
                    print {$ctl} "ok\n";
                    $ctl->flush;
                    next;
                }
                $drop->(values %sock);
                close $_ for splice @held;
                $mode = $cmd if $cmd ne 'reset';
                print {$ctl} "ok\n";
                $ctl->flush;
            } elsif ($s == $listen) {
                my $c = $listen->accept or next;
                if ($mode eq 'hang') { push @held, $c; next }
                my $u = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $to, Proto => 'tcp');
                if (!$u) { close $c; next }
                ($peer{ fileno $c }, $peer{ fileno $u }) = ($u, $c);
                ($sock{ fileno $c }, $sock{ fileno $u }) = ($c, $u);
                $sel->add($c, $u);
            } elsif (!defined fileno $s) {
                next;                           # closed earlier in this batch
            } elsif (my $p = $peer{ fileno $s }) {
                my $n = sysread($s, my $buf, 65536);
                if (!$n) { $drop->($s, $p); next }
                while (length $buf) {
                    my $w = syswrite($p, $buf);
                    if (!$w) { $drop->($s, $p); last }
                    substr($buf, 0, $w, '');
                }
            }
        }
    }
}

sub stop {
    my ($self) = @_;
    my $pid = delete $self->{pid} or return;
    close $self->{ctl};
    OsagoStack::_stop_child($pid, 'TERM', 5);
}

sub DESTROY {
    my ($self) = @_;
    return unless $self->{owner} && $self->{owner} == $$;
    local ($?, $!, $@);
    eval { $self->stop };
}

# --- insurer-sim -------------------------------------------------------------------------------

package OsagoStack::InsurerSim;

use strict;
use warnings;
use Carp qw(croak);
use File::Path qw(remove_tree);

# new(insurers => 'a,b,c' | [..], latency => '20-50', opts => ['CODE:k=v,..'] | {CODE => 'k=v'},
#     hold_ms => .., seed => .., timeouts => {CODE => ms}, args => [..])
sub new {
    my ($class, %opt) = @_;
    my $bin = OsagoStack::tool_bin('insurer-sim') or croak 'insurer-sim not built';
    my $dir = OsagoTest::_tempdir('insurer-sim');
    my $self = bless { dir => $dir, port => $opt{port} // OsagoTest::free_port(), owner => $$,
                       opt => \%opt }, $class;
    OsagoTest::_register($self);
    my $ins = $opt{insurers} // 'alfa,ingos,reso,vsk,rosgosstrakh';
    $ins = join ',', @$ins if ref $ins;
    my @opts = ref $opt{opts} eq 'HASH' ? map { "$_:$opt{opts}{$_}" } sort keys %{ $opt{opts} }
             : @{ $opt{opts} || [] };
    my @cmd = ($bin, '--listen', "127.0.0.1:$self->{port}", '--insurers', $ins,
               '--write-insurers', "$dir/insurers.sim.json",
               (defined $opt{latency} ? ('--latency-ms', $opt{latency}) : ()),
               (defined $opt{hold_ms} ? ('--hold-ms', $opt{hold_ms}) : ()),
               (defined $opt{seed} ? ('--seed', $opt{seed}) : ()),
               map({ ('--insurer-opts', $_) } @opts), @{ $opt{args} || [] });
    my ($pid, $r) = OsagoStack::_spawn(cmd => \@cmd, stderr => "$dir/insurer-sim.log", ready => 1);
    $self->{pid} = $pid;
    $self->{rpipe} = $r;
    my $out = OsagoStack::_read_ready($r, qr/\n/, 20);
    croak "insurer-sim did not start: $out\n" . $self->log unless $out =~ /ready/;
    $self->{file} = $self->write_insurers("$dir/insurers.json", timeouts => $opt{timeouts} || {});
    return $self;
}

sub port  { $_[0]{port} }
sub pid   { $_[0]{pid} }
sub url   { "http://127.0.0.1:$_[0]{port}" . ($_[1] // '/') }
sub log   { OsagoTest::_slurp("$_[0]{dir}/insurer-sim.log") }
sub dir   { $_[0]{dir} }
sub insurers_file { $_[0]{file} }

# The list insurer-sim wrote: [ {code, name, url, timeout_ms} ]
sub insurers {
    my ($self) = @_;
    return JSON::PP->new->utf8->decode(OsagoTest::_slurp("$self->{dir}/insurers.sim.json"));
}

# write_insurers($path, timeouts => {CODE => ms}, add => [ {code, name, url, timeout_ms} ],
#                only => [codes]) -> $path: the worker's insurer file, adjusted.
sub write_insurers {
    my ($self, $path, %o) = @_;
    my $list = $self->insurers;
    if ($o{only}) {
        my %keep = map { $_ => 1 } @{ $o{only} };
        $list = [ grep { $keep{ $_->{code} } } @$list ];
    }
    for my $i (@$list) {
        $i->{timeout_ms} = $o{timeouts}{ $i->{code} } + 0 if defined $o{timeouts}{ $i->{code} };
    }
    push @$list, @{ $o{add} || [] };
    OsagoTest::_spew("$path.tmp", JSON::PP->new->utf8->canonical->encode($list) . "\n");
    rename "$path.tmp", $path or croak "rename $path: $!";
    return $path;
}

sub stop {
    my ($self) = @_;
    my $pid = delete $self->{pid} or return;
    my $st = OsagoStack::_stop_child($pid, 'TERM', 10);
    close $self->{rpipe} if $self->{rpipe};
    delete $self->{rpipe};
    return $st;
}

sub DESTROY {
    my ($self) = @_;
    return unless $self->{owner} && $self->{owner} == $$;
    local ($?, $!, $@);
    eval { $self->stop };
    remove_tree($self->{dir}) if $self->{dir} && -d $self->{dir} && !$ENV{OSAGO_KEEP};
}

# --- osago-worker ------------------------------------------------------------------------------

package OsagoStack::Worker;

use strict;
use warnings;
use Carp qw(croak);
use File::Path qw(remove_tree);
use POSIX qw(:sys_wait_h);
use Time::HiRes qw(time sleep);

sub bin { OsagoStack::worker_bin() }

my $seq = 0;

sub _env {
    my (%extra) = @_;
    return {
        ASAN_OPTIONS  => $ENV{OSAGO_WORKER_ASAN_OPTIONS} // 'detect_leaks=1',
        UBSAN_OPTIONS => $ENV{UBSAN_OPTIONS} // 'print_stacktrace=1',
        %extra,
    };
}

# migrate($pg, migrations => dir, args => [...]) -> (exit code, stdout, stderr)
sub migrate {
    my ($class, $pg, %o) = @_;
    local %ENV = (%ENV, %{ _env() });
    return OsagoTest::run_cmd(migrate_cmd($class, $pg, %o));
}

# The command line of migrate($pg, ...), for a test that runs it beside other work.
sub migrate_cmd {
    my ($class, $pg, %o) = @_;
    my $bin = bin();
    croak "osago-worker not built: $bin" unless -x $bin;
    my $dir = $o{migrations} // File::Spec->catdir(OsagoTest::root(), 'worker', 'migrations');
    return ($bin, 'migrate', '--pg', ref $pg ? $pg->conninfo : $pg, '--migrations', $dir,
            @{ $o{args} || [] });
}

# new(pg => $pg, redis => $redis, kafka => $devbroker, insurers => file | InsurerSim,
#     roles => 'all', name => 'w1', args => [...], env => {...}, migrate => 1,
#     wait => 'healthz' (default) | 'readyz' | 0, http_port => P)
sub new {
    my ($class, %opt) = @_;
    my $bin = bin();
    croak "osago-worker not built: $bin (make -f Makefile -f worker/build.mk $bin)" unless -x $bin;
    if ($opt{migrate}) {
        my ($c, $o, $e) = $class->migrate($opt{pg});
        croak "osago-worker migrate failed ($c): $o$e" if $c;
    }
    my $dir = OsagoTest::_tempdir('worker');
    my $name = $opt{name} // sprintf('w%d-%d', $$, ++$seq);
    my $self = bless { dir => $dir, name => $name, port => $opt{http_port} // OsagoTest::free_port(),
                       opt => \%opt, owner => $$ }, $class;
    OsagoTest::_register($self);
    my $ins = $opt{insurers};
    $ins = $ins->insurers_file if ref $ins;
    my @cmd = ($bin, 'run',
               '--kafka', ref $opt{kafka} ? $opt{kafka}->bootstrap : $opt{kafka},
               '--redis', ref $opt{redis} ? $opt{redis}->addr : $opt{redis},
               '--pg', ref $opt{pg} ? $opt{pg}->conninfo : $opt{pg},
               '--insurers', $ins,
               '--http', "127.0.0.1:$self->{port}",
               '--roles', $opt{roles} // 'all',
               '--name', $name,
               @{ $opt{args} || [] });
    $self->{cmd} = \@cmd;
    $self->start;
    return $self;
}

sub start {
    my ($self) = @_;
    croak "worker $self->{name} already running" if $self->running;
    my ($pid) = OsagoStack::_spawn(cmd => $self->{cmd}, stderr => $self->log_file,
                                   stdout => "$self->{dir}/stdout.log",
                                   env => _env(%{ $self->{opt}{env} || {} }));
    $self->{pid} = $pid;
    delete $self->{status};
    my $wait = $self->{opt}{wait} // 'healthz';
    if ($wait) {
        my $ok = OsagoTest::wait_for(sub {
            return 1 if $self->_get("/$wait")->{status} == 200;
            return 'exited' unless $self->running;
            0;
        }, $self->{opt}{wait_timeout} // 30, 0.1);
        croak "worker $self->{name}: /$wait not 200 ("
            . ($ok ? "exited with " . ($self->{status} // '?') : 'timeout') . ")\n"
            . substr($self->log_text, -4000) if !$ok || $ok eq 'exited';
    }
    return $self;
}

sub pid      { $_[0]{pid} }
sub port     { $_[0]{port} }
sub name     { $_[0]{name} }
sub dir      { $_[0]{dir} }
sub url      { "http://127.0.0.1:$_[0]{port}" . ($_[1] // '/') }
sub log_file { "$_[0]{dir}/stderr.log" }
sub log_text { OsagoTest::_slurp($_[0]->log_file) }
sub exit_status { $_[0]{status} }

# Still running (reaps it and keeps its status when it has exited).
sub running {
    my ($self) = @_;
    my $pid = $self->{pid} or return 0;
    return 0 if defined $self->{status};
    my $r = waitpid($pid, WNOHANG);
    if ($r == $pid) { $self->{status} = $?; return 0 }
    return $r == 0;
}

# The JSON log lines, decoded (lines that are not JSON objects: {_raw => line}).
sub log_lines {
    my ($self) = @_;
    my @out;
    for my $line (split /\n/, $self->log_text) {
        next unless length $line;
        my $j = $line =~ /^\{/ ? eval { JSON::PP->new->utf8->decode($line) } : undef;
        push @out, ref $j eq 'HASH' ? $j : { _raw => $line };
    }
    return \@out;
}

# Sanitizer reports in the log, if any.
sub sanitizer_report {
    my ($self) = @_;
    my $t = $self->log_text;
    return $t =~ /(==\d+==\s*ERROR: (?:AddressSanitizer|LeakSanitizer).*|.*runtime error: .*)/s
        ? substr($1, 0, 6000) : undef;
}

sub _get {
    my ($self, $path) = @_;
    return OsagoTest::http(GET => $self->url($path), timeout => 5);
}

sub healthz { $_[0]->_get('/healthz')->{status} }
sub readyz  { $_[0]->_get('/readyz')->{status} }

# The parsed /metrics ({} when it does not answer).
sub metrics {
    my ($self) = @_;
    my $res = $self->_get('/metrics');
    $self->{metrics_text} = $res->{content};
    return {} unless $res->{status} == 200;
    return OsagoTest::prom_parse($res->{content});
}

sub metrics_text { $_[0]{metrics_text} }

# metric('intake_relayed', %labels, from => $parsed): the sum over every series of
# osago_worker_intake_relayed(_total) (or osago_intake_relayed(_total)); undef if none.
sub metric {
    my ($self, $short, %l) = @_;
    my $m = delete $l{from} // $self->metrics;
    return OsagoStack::metric_of($m, $short, %l);
}

sub kill {
    my ($self, $sig) = @_;
    return CORE::kill $sig // 'TERM', $self->{pid};
}

# Waits for it to exit; returns the wait status (undef if still running).
sub wait_exit {
    my ($self, $timeout) = @_;
    OsagoTest::wait_for(sub { !$self->running }, $timeout // 10, 0.02);
    return $self->{status};
}

# SIGTERM, wait; then two tests: exit code 0, no sanitizer report. Returns 1 if both passed.
sub stop {
    my ($self, %o) = @_;
    my $name = $self->{name};
    my $took = time;
    if ($self->running) {
        CORE::kill 'TERM', $self->{pid};
        unless (defined $self->wait_exit($o{timeout} // 20)) {
            CORE::kill 'KILL', $self->{pid};
            $self->wait_exit(5);
            $self->{killed} = 1;
        }
    }
    $took = time - $took;
    my $st = $self->{status} // -1;
    my $code = $st & 127 ? 'signal ' . ($st & 127) : $st >> 8;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my $ok1 = Test::More::ok(!$self->{killed} && $code eq '0',
                             sprintf('worker %s: SIGTERM, exits 0 (%.1f s)', $name, $took))
        || Test::More::diag("exit: $code" . ($self->{killed} ? ' (SIGKILLed after timeout)' : '')
                            . "\n" . substr($self->log_text, -3000));
    my $rep = $self->sanitizer_report;
    my $ok2 = Test::More::ok(!defined $rep, "worker $name: no sanitizer report in its log")
        || Test::More::diag($rep);
    delete $self->{pid};
    return $ok1 && $ok2;
}

sub DESTROY {
    my ($self) = @_;
    return unless $self->{owner} && $self->{owner} == $$;
    local ($?, $!, $@);
    if ($self->{pid} && $self->running) {
        CORE::kill 'TERM', $self->{pid};
        unless (defined $self->wait_exit(10)) { CORE::kill 'KILL', $self->{pid}; $self->wait_exit(5) }
    }
    remove_tree($self->{dir}) if $self->{dir} && -d $self->{dir} && !$ENV{OSAGO_KEEP};
}

# --- a connection recording what Redis sends it ------------------------------------------------

package OsagoStack::RedisWatch;

use strict;
use warnings;
use Carp qw(croak);
use File::Path qw(remove_tree);
use IO::Socket::IP;
use Time::HiRes qw(time sleep);

# new($redis, 'SUBSCRIBE', 'osago:app-updates') or new($redis, 'MONITOR'): a child process
# connects, sends the command and appends every byte it receives to a file until stopped.
sub new {
    my ($class, $redis, @cmd) = @_;
    my $dir = OsagoTest::_tempdir('watch');
    my $file = "$dir/raw";
    OsagoTest::_spew($file, '');
    my $s = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $redis->port, Proto => 'tcp',
                                Timeout => 3) or croak "watch: connect: $!";
    binmode $s;
    my $pid = fork // croak "fork: $!";
    if ($pid == 0) {
        $SIG{$_} = 'DEFAULT' for qw(INT TERM HUP);
        open my $out, '>>', $file or POSIX::_exit(1);
        binmode $out;
        $out->autoflush(1);
        my $req = '*' . @cmd . "\r\n";
        $req .= '$' . length($_) . "\r\n$_\r\n" for @cmd;
        print {$s} $req;
        while (1) {
            my $n = sysread($s, my $buf, 65536);
            last unless $n;
            print {$out} $buf;
        }
        POSIX::_exit(0);
    }
    close $s;
    my $self = bless { pid => $pid, dir => $dir, file => $file, cmd => uc $cmd[0], owner => $$ },
                     $class;
    OsagoTest::_register($self);
    my $ok = OsagoTest::wait_for(sub { -s $file }, 5);
    croak "watch: no answer to @cmd" unless $ok;
    return $self;
}

sub raw { OsagoTest::_slurp($_[0]{file}) }

# SUBSCRIBE: the messages received, in order: [ [channel, message], ... ]
sub messages {
    my ($self) = @_;
    my $buf = $self->raw;
    my @msgs;
    while (length $buf) {
        my $v = _parse(\$buf);
        last unless defined $v;
        next unless ref $v eq 'ARRAY' && @$v == 3 && $v->[0] eq 'message';
        push @msgs, [ $v->[1], $v->[2] ];
    }
    return \@msgs;
}

# MONITOR: [ {ts, client, db, cmd (lowercased), args => [...]} ] (client "lua" from scripts)
sub monitor {
    my ($self) = @_;
    my @out;
    for my $line (split /\r\n/, $self->raw) {
        next unless $line =~ /^\+(\d+\.\d+) \[(\d+) ([^\]]+)\] (.*)$/;
        my ($ts, $db, $client, $rest) = ($1, $2, $3, $4);
        my @args = map { _unescape($_) } $rest =~ /"((?:[^"\\]|\\.)*)"/g;
        next unless @args;
        my $cmd = lc shift @args;
        push @out, { ts => $ts, db => $db, client => ($client =~ /lua/ ? 'lua' : $client),
                     cmd => $cmd, args => \@args };
    }
    return \@out;
}

sub _unescape {
    my ($s) = @_;
    $s =~ s/\\x([0-9a-fA-F]{2})|\\(.)/defined $1 ? chr(hex $1)
           : $2 eq 'n' ? "\n" : $2 eq 'r' ? "\r" : $2 eq 't' ? "\t" : $2 eq 'a' ? "\a"
           : $2 eq 'b' ? "\b" : $2/ge;
    return $s;
}

# One RESP value off the front of $$buf (undef when incomplete).
sub _parse {
    my ($b) = @_;
    my $pos = 0;
    my $rec;
    $rec = sub {
        my $nl = index($$b, "\r\n", $pos);
        return (0) if $nl < 0;
        my $line = substr($$b, $pos, $nl - $pos);
        $pos = $nl + 2;
        my ($t, $rest) = (substr($line, 0, 1), substr($line, 1));
        return (1, $rest) if $t eq '+' || $t eq '-' || $t eq ':';
        if ($t eq '$') {
            return (1, undef) if $rest < 0;
            return (0) if length($$b) < $pos + $rest + 2;
            my $v = substr($$b, $pos, $rest);
            $pos += $rest + 2;
            return (1, $v);
        }
        if ($t eq '*') {
            my @a;
            for (1 .. $rest) {
                my ($ok, $v) = $rec->();
                return (0) unless $ok;
                push @a, $v;
            }
            return (1, \@a);
        }
        return (1, $line);
    };
    my ($ok, $v) = $rec->();
    return undef unless $ok;
    substr($$b, 0, $pos, '');
    return $v;
}

sub stop {
    my ($self) = @_;
    my $pid = delete $self->{pid} or return;
    OsagoStack::_stop_child($pid, 'TERM', 5);
}

sub DESTROY {
    my ($self) = @_;
    return unless $self->{owner} && $self->{owner} == $$;
    local ($?, $!, $@);
    $self->stop;
    remove_tree($self->{dir}) if $self->{dir} && -d $self->{dir} && !$ENV{OSAGO_KEEP};
}

# --- an insurer that records every call ---------------------------------------------------------

package OsagoStack::FakeInsurer;

use strict;
use warnings;
use Carp qw(croak);
use File::Path qw(remove_tree);
use IO::Select;
use IO::Socket::IP;
use Time::HiRes qw(time sleep);

# new(code => 'rec', mode => 'status' (answers status => 500) | 'hang' (never answers) |
#     'garbage' (200, not JSON) | 'ok' (200 with premium => 1234.56, or premium_text => the
#     number as written), body => the answer's bytes instead, delay_s => answer after):
# a forked HTTP server; every request is recorded (time, path, traceparent, body) before the
# answer. One process per connection, in the server's own process group, stopped by its id.
sub new {
    my ($class, %opt) = @_;
    my $dir = OsagoTest::_tempdir('fake-insurer');
    my $file = "$dir/calls.jsonl";
    OsagoTest::_spew($file, '');
    my $port = OsagoTest::free_port();
    my $srv = IO::Socket::IP->new(LocalHost => '127.0.0.1', LocalPort => $port, Listen => 256,
                                  ReuseAddr => 1, Proto => 'tcp') or croak "listen: $!";
    my $mode = $opt{mode} // 'status';
    my $pid = fork // croak "fork: $!";
    if ($pid == 0) {
        setpgrp(0, 0);
        $SIG{$_} = 'DEFAULT' for qw(INT TERM HUP);
        $SIG{CHLD} = 'IGNORE';    # connections are reaped as they end
        # stopping: end the connections first (still our children, so reaped), then exit
        $SIG{TERM} = sub {
            $SIG{TERM} = 'IGNORE';
            kill 'TERM', -$$;
            sleep 0.3;
            POSIX::_exit(0);
        };
        while (1) {
            my $c = $srv->accept or next;
            my $kid = fork;
            if (defined $kid && $kid == 0) {
                $SIG{TERM} = 'DEFAULT';
                alarm($opt{hold_s} // 30);
                _serve($c, $file, $mode, \%opt);
                POSIX::_exit(0);
            }
            close $c;
        }
    }
    close $srv;
    my $self = bless { pid => $pid, port => $port, dir => $dir, file => $file,
                       code => $opt{code} // 'rec', name => $opt{name} // 'Recorder',
                       owner => $$ }, $class;
    OsagoTest::_register($self);
    OsagoTest::wait_for(sub { OsagoTest::port_open($port) }, 5);
    return $self;
}

sub _serve {
    my ($c, $file, $mode, $opt) = @_;
    binmode $c;
    my $buf = '';
    while ($buf !~ /\r\n\r\n/) { sysread($c, $buf, 65536, length $buf) or return }
    my ($head, $body) = split /\r\n\r\n/, $buf, 2;
    my ($method, $path) = $head =~ /^(\S+) (\S+)/;
    my %h;
    for (split /\r\n/, $head) { $h{ lc $1 } = $2 if /^([^:\s]+):\s*(.*)$/ }
    my $len = $h{'content-length'} // 0;
    while (length($body) < $len) { sysread($c, $body, 65536, length $body) or last }
    my $j = eval { JSON::PP->new->utf8->decode($body) };
    my $rec = JSON::PP->new->utf8->canonical->encode({
        t => time, method => $method, path => $path, traceparent => $h{traceparent},
        content_type => $h{'content-type'}, application_id => ref $j eq 'HASH' ? $j->{application_id} : undef,
        body => $body });
    open my $fh, '>>', $file or return;
    syswrite $fh, "$rec\n";    # one write: lines from parallel connections do not interleave
    close $fh;
    my ($status, $out, $type) = (200, '', 'application/json');
    sleep $opt->{delay_s} if $opt->{delay_s};
    if ($mode eq 'hang') {
        sleep 3600;
        return;
    } elsif ($mode eq 'status') {
        $status = $opt->{status} // 500;
        $out = '{"error":"insurer_unavailable","message":"recorded failure"}';
    } elsif ($mode eq 'garbage') {
        ($out, $type) = ('<html><body>502 Bad Gateway</body></html>', 'text/html');
    } else {
        $out = sprintf '{"insurer":"%s","application_id":"%s","premium_rub":%s}',
                       $opt->{code} // 'rec', (ref $j eq 'HASH' ? $j->{application_id} // '' : ''),
                       $opt->{premium_text} // sprintf('%.2f', $opt->{premium} // 1234.56);
    }
    $out = $opt->{body} if defined $opt->{body};    # bytes as given, whatever the mode
    print {$c} "HTTP/1.1 $status X\r\nContent-Type: $type\r\nContent-Length: " . length($out)
             . "\r\nConnection: close\r\n\r\n$out";
    close $c;
}

sub port { $_[0]{port} }
sub code { $_[0]{code} }
sub url  { "http://127.0.0.1:$_[0]{port}/quote" }

# The entry for the worker's insurer file.
sub entry {
    my ($self, %o) = @_;
    return { code => $self->{code}, name => $self->{name}, url => $self->url,
             timeout_ms => $o{timeout_ms} // 60000 };
}

# [ {t, method, path, traceparent, content_type, application_id, body} ] in arrival order
sub calls {
    my ($self) = @_;
    my @c = map { eval { JSON::PP->new->utf8->decode($_) } // () }
            split /\n/, OsagoTest::_slurp($self->{file});
    return [ sort { $a->{t} <=> $b->{t} } @c ];
}

sub stop {
    my ($self) = @_;
    my $pid = delete $self->{pid} or return;
    OsagoStack::_stop_child($pid, 'TERM', 5);    # it ends its own connections
}

sub DESTROY {
    my ($self) = @_;
    return unless $self->{owner} && $self->{owner} == $$;
    local ($?, $!, $@);
    $self->stop;
    remove_tree($self->{dir}) if $self->{dir} && -d $self->{dir} && !$ENV{OSAGO_KEEP};
}

package OsagoStack;

# metric_of($parsed, 'intake_relayed', %labels): the sum over the series of the worker's
# metric of that short name, whatever its prefix and _total suffix (osago_worker_X_total,
# osago_worker_X, osago_X_total, osago_X); undef when there is none.
sub metric_of {
    my ($m, $short, %l) = @_;
    for my $name ("osago_worker_${short}_total", "osago_worker_$short", "osago_${short}_total",
                  "osago_$short") {
        my $v = OsagoTest::prom_sum($m, $name, %l);
        return $v if defined $v;
    }
    return undef;
}

# --- what the worker left: PostgreSQL and the read model ----------------------------------------

sub _in { join ',', map { "'$_'" } @{ $_[0] } }

sub completed_count {
    my ($pg, $ids) = @_;
    return 0 unless @$ids;
    my ($n) = $pg->psql("SELECT count(*) FROM applications WHERE status = 'completed' AND id IN ("
                        . _in($ids) . ')', quiet => 1);
    return $n // 0;
}

# wait_completed($pg, \@ids, $timeout): true when every one is completed in PostgreSQL.
sub wait_completed {
    my ($pg, $ids, $timeout) = @_;
    return wait_until(sub { completed_count($pg, $ids) == @$ids }, $timeout // 30, 0.2);
}

# { app id => { insurer code => {status, attempt, premium, error, heartbeat} } }
sub quotes_of {
    my ($pg, $ids) = @_;
    my %q;
    return \%q unless @$ids;
    for my $r (@{ $pg->rows('SELECT application_id, insurer_code, status, attempt, premium_rub,'
                            . " coalesce(error, '<null>'), heartbeat_at IS NOT NULL FROM quotes"
                            . ' WHERE application_id IN (' . _in($ids) . ')') }) {
        my ($a, $c, $s, $n, $p, $e, $hb) = @$r;
        $q{$a}{$c} = { status => $s, attempt => $n, premium => $p eq '' ? undef : $p,
                       error => $e eq '<null>' ? undef : $e, heartbeat => $hb };
    }
    return \%q;
}

# { status => .., partner => .., payload => (decoded) } of one application (undef if none)
sub application {
    my ($pg, $id) = @_;
    my ($row) = @{ $pg->rows("SELECT status, partner, payload::text FROM applications WHERE id = '$id'") };
    return undef unless $row;
    return { status => $row->[0], partner => $row->[1],
             payload => eval { JSON::PP->new->utf8->decode($row->[2]) } };
}

# The read model: { doc (decoded), doc_raw, owner, updated_at, ttl }
sub read_model {
    my ($redis, $id) = @_;
    my %h = @{ OsagoIntake::resp($redis, 'HGETALL', "osago:app:$id") || [] };
    return { %h, doc_raw => $h{doc},
             doc => defined $h{doc} ? eval { JSON::PP->new->utf8->decode($h{doc}) } : undef,
             ttl => OsagoIntake::resp($redis, 'TTL', "osago:app:$id") };
}

# "Nothing lost, nothing duplicated", as one subtest: exactly these applications exist, each
# completed with exactly one quote per insurer code, every quote terminal (ok or error); the
# read model of each says completed with the same insurers and statuses.
sub check_all_done {
    my ($pg, $redis, $ids, $codes, $what) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my $ok = 1;
    Test::More::subtest($what // 'nothing lost, nothing duplicated' => sub {
        my %want = map { $_ => 1 } @$ids;
        my @apps = $pg->psql('SELECT id, status FROM applications ORDER BY id');
        my %got = map { split /\|/ } @apps;
        Test::More::is(scalar(keys %got), scalar(@$ids),
                       scalar(@$ids) . ' applications in PostgreSQL, no more') or $ok = 0;
        my @missing = grep { !$got{$_} } @$ids;
        Test::More::ok(!@missing, 'none missing') or $ok = 0, Test::More::diag("missing: @missing");
        my @notdone = grep { ($got{$_} // '') ne 'completed' } @$ids;
        Test::More::ok(!@notdone, 'every one completed')
            or $ok = 0, Test::More::diag('not completed: '
                                         . join(', ', map { "$_=" . ($got{$_} // 'none') } @notdone));
        my ($nq) = $pg->psql('SELECT count(*) FROM quotes');
        my ($nd) = $pg->psql('SELECT count(DISTINCT (application_id, insurer_code)) FROM quotes');
        Test::More::is($nq, @$ids * @$codes, 'one quote row per application and insurer, no more')
            or $ok = 0;
        Test::More::is($nd, $nq, 'no (application, insurer) twice') or $ok = 0;
        my $q = quotes_of($pg, $ids);
        my @bad;
        my $want_codes = join ',', sort @$codes;
        for my $id (@$ids) {
            my $have = join ',', sort keys %{ $q->{$id} || {} };
            push @bad, "$id: insurers [$have]" if $have ne $want_codes;
            for my $c (sort keys %{ $q->{$id} || {} }) {
                my $s = $q->{$id}{$c}{status};
                push @bad, "$id/$c: $s" unless $s eq 'ok' || $s eq 'error';
            }
        }
        Test::More::ok(!@bad, 'every quote terminal (ok or error), one per insurer')
            or $ok = 0, Test::More::diag(join "\n", @bad[0 .. ($#bad > 20 ? 20 : $#bad)]);
        my @rm_bad;
        for my $id (@$ids) {
            my $rm = read_model($redis, $id);
            my $doc = $rm->{doc};
            if (!$doc) { push @rm_bad, "$id: no read model"; next }
            push @rm_bad, "$id: doc.status $doc->{status}" unless ($doc->{status} // '') eq 'completed';
            my %ds = map { $_->{code} => $_->{status} } @{ $doc->{insurers} || [] };
            my $have = join ',', sort keys %ds;
            push @rm_bad, "$id: doc insurers [$have]" if $have ne $want_codes
                || @{ $doc->{insurers} || [] } != @$codes;
            for my $c (keys %ds) {
                my $s = $q->{$id}{$c}{status} // '';
                push @rm_bad, "$id/$c: doc $ds{$c}, PostgreSQL $s" if $ds{$c} ne $s;
            }
            push @rm_bad, "$id: hash updated_at $rm->{updated_at} != doc $doc->{updated_at}"
                if ($rm->{updated_at} // '') ne ($doc->{updated_at} // '');
        }
        Test::More::ok(!@rm_bad, 'every read model completed, same quotes as PostgreSQL')
            or $ok = 0, Test::More::diag(join "\n", @rm_bad[0 .. ($#rm_bad > 20 ? 20 : $#rm_bad)]);
    });
    return $ok;
}

1;
