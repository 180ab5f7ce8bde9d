package OsagoTest;

# The project's own small test harness (Test::Nginx is not packaged in Debian).
#
#   use lib 't/lib'; use OsagoTest;
#   my $r = OsagoTest::Redis->new;
#   my $n = OsagoTest::Nginx->new(redis => $r, http => 'server { listen 127.0.0.1:%%PORT%%; ... }');
#   my $res = OsagoTest::http(GET => $n->url('/'), headers => { 'X-API-Key' => $key });
#
# Interface (other tests rely on it):
#   root(), build_dir(), free_port(), http(), osagoctl($redis, @args), add_partner($redis, ...)
#   OsagoTest::Redis  new(%opt) port addr cli stop start pause resume       (+ pid dir log socket
#                     monitor running)
#   OsagoTest::Nginx  new(http => .., workers => .., main => .., events => .., redis => $r,
#                     module => 0|1, files => {path => text}) port prefix error_log stop reload
#                     worker_pids, class method check_config($http, %opt)  (+ port2 port_n url
#                     conf master_pid running)
# Extras: raw_http($port, $bytes), flood(url => .., rps => .., duration => ..), ratelimit($res),
#   problem($res), prom_parse/prom_sum/prom_invalid_lines, median, wait_for, key_hash,
#   random_key, OsagoTest::Backend (an upstream that echoes what it got, as JSON).
#
# Everything binds to 127.0.0.1. Every process started here is stopped by its own pid, and only
# by the process that started it (forked children never stop their parent's servers).

use strict;
use warnings;

use Carp qw(croak);
use Cwd qw(abs_path);
use Digest::SHA qw(sha256_hex);
use File::Basename qw(dirname);
use File::Path qw(remove_tree);
use File::Spec;
use File::Temp qw(tempdir);
use HTTP::Tiny;
use IO::Socket::IP;
use IO::Select;
use IPC::Open3 qw(open3);
use POSIX qw(:sys_wait_h);
use Symbol qw(gensym);
use Time::HiRes qw(time sleep);

our $NGINX      = $ENV{OSAGO_NGINX_BIN}  || '/usr/sbin/nginx';
our $REDIS      = $ENV{OSAGO_REDIS_SERVER}|| 'redis-server';
our $REDIS_CLI  = $ENV{OSAGO_REDIS_CLI_BIN}|| 'redis-cli';

# Redis and nginx daemonise; their parent then is PID 1, which here does not reap them (they
# would stay as zombies). As a child subreaper this process adopts them and waits for them itself.
{
    require Config;
    my %prctl = (x86_64 => 157, aarch64 => 167, i386 => 172, i686 => 172);
    my ($arch) = $Config::Config{archname} =~ /^([^-]+)/;
    syscall($prctl{$arch}, 36, 1) if $prctl{$arch};    # prctl(PR_SET_CHILD_SUBREAPER, 1)
}

my $ROOT = abs_path(File::Spec->catdir(dirname(abs_path(__FILE__)), '..', '..'));

sub root      { $ROOT }
sub build_dir { $ENV{OSAGO_BUILD} || File::Spec->catdir($ROOT, 'build') }
sub module_so { File::Spec->catfile(build_dir(), 'nginx', 'ngx_http_osago_module.so') }

# --- small utilities -------------------------------------------------------------------------

sub _tempdir {
    my ($tag) = @_;
    my $base = $ENV{TMPDIR} && -d $ENV{TMPDIR} ? $ENV{TMPDIR} : '/tmp';
    my $d = tempdir("osago-$tag-XXXXXX", DIR => $base, CLEANUP => 0);
    chmod 0755, $d;    # nginx workers run as nobody and must reach the temp paths
    return $d;
}

sub _slurp {
    my ($f) = @_;
    open my $fh, '<', $f or return '';
    local $/;
    my $s = <$fh>;
    return defined $s ? $s : '';
}

sub _spew {
    my ($f, $s) = @_;
    open my $fh, '>', $f or croak "write $f: $!";
    print {$fh} $s;
    close $fh or croak "close $f: $!";
}

# A pid counts as alive unless it is gone or a zombie (PID 1 may not reap daemonised processes).
sub pid_alive {
    my ($pid) = @_;
    return 0 unless $pid && $pid > 1;
    waitpid($pid, WNOHANG);    # reap it if it happens to be our child
    return 0 unless kill 0, $pid;
    my $stat = _slurp("/proc/$pid/stat");
    return 1 unless length $stat;
    my ($state) = $stat =~ /\)\s+(\S)/;
    return !(defined $state && ($state eq 'Z' || $state eq 'X'));
}

# Sleeps until the epoch time $t (at once when it has passed).
sub sleep_until {
    my ($t) = @_;
    my $d = $t - Time::HiRes::time();
    Time::HiRes::sleep($d) if $d > 0;
}

# Poll $cond every $step seconds until it returns true or $timeout passes; returns its last value.
sub wait_for {
    my ($cond, $timeout, $step) = @_;
    $timeout //= 5;
    $step    //= 0.02;
    my $deadline = time + $timeout;
    while (1) {
        my $v = $cond->();
        return $v if $v;
        return $v if time >= $deadline;
        sleep $step;
    }
}

sub port_open {
    my ($port, $host) = @_;
    my $s = IO::Socket::IP->new(PeerHost => $host // '127.0.0.1', PeerPort => $port,
                                Proto => 'tcp', Timeout => 1);
    return 0 unless $s;
    close $s;
    return 1;
}

# Listen ports are picked at random below the ephemeral range (32768+), so client connections
# never take them, and parallel test files (prove -j) practically never pick the same one; each
# is checked by binding it. One process never hands out the same port twice.
my %given_port;

sub free_port {
    for (1 .. 500) {
        my $port = 20000 + int(rand(12000));
        next if $given_port{$port};
        my $s = IO::Socket::IP->new(LocalHost => '127.0.0.1', LocalPort => $port, Proto => 'tcp',
                                    Listen => 1, ReuseAddr => 0) or next;
        close $s;
        next if port_open($port);
        $given_port{$port} = 1;
        return $port;
    }
    croak "no free 127.0.0.1 port found";
}

# Run a command (list form, no shell); returns ($exit_code, $stdout, $stderr).
sub run_cmd {
    my (@cmd) = @_;
    my ($in, $out, $err) = (undef, '', '');
    my $errfh = gensym;
    local $SIG{PIPE} = 'DEFAULT';    # what the command starts keeps the usual disposition
    my $pid = open3($in, my $outfh, $errfh, @cmd);
    close $in;
    # Read both without deadlock: stderr is usually small, but use select anyway.
    my $sel = IO::Select->new($outfh, $errfh);
    while (my @ready = $sel->can_read) {
        for my $fh (@ready) {
            my $n = sysread($fh, my $buf, 65536);
            if (!$n) { $sel->remove($fh); next; }
            if ($fh == $outfh) { $out .= $buf } else { $err .= $buf }
        }
    }
    waitpid($pid, 0);
    my $code = $? & 127 ? 128 + ($? & 127) : $? >> 8;
    return ($code, $out, $err);
}

# kcat against bootstrap with args, stdin from $input (a scalar ref; empty when undef), under a
# timeout (a hung client must fail the test, not hang it); returns run_cmd's ($code, $out, $err).
sub kcat {
    my ($bootstrap, $input, @args) = @_;
    my $in = File::Temp->new;
    print {$in} $input ? $$input : '';
    close $in;
    return run_cmd('sh', '-c', 'exec timeout 60 kcat "$@" < "$0"', $in->filename,
                   '-b', $bootstrap, @args);
}

# Runs a cmocka test binary (built with ASan/UBSan) and reports each of its tests as one Test::More
# test named "$label: ...", plus three more: every planned test ran, exit code 0, and no sanitizer
# report on stderr. BAILs out when the binary is not built.
sub run_cmocka {
    my ($bin, $label) = @_;
    require File::Temp;
    bail("unit tests are not built: $bin is missing (make $bin)") unless -x $bin;
    my ($errfh, $errfile) = File::Temp::tempfile('osago-cmocka-XXXXXX', TMPDIR => 1, UNLINK => 1);
    close $errfh;

    my $tap = do {
        local $ENV{CMOCKA_MESSAGE_OUTPUT} = 'TAP';
        # UBSan reports and carries on by default; a report still fails below.
        local $ENV{UBSAN_OPTIONS} = 'print_stacktrace=1';
        open(my $out, '-|', "exec '$bin' 2>'$errfile'") or die "cannot run $bin: $!";
        local $/;
        my $text = <$out>;
        close $out;
        $text // '';
    };
    my $status = $?;
    my $stderr = do { local (@ARGV, $/) = ($errfile); <> } // '';

    my ($planned) = $tap =~ /^1\.\.(\d+)$/m;
    my $seen = 0;
    for my $line (split /\n/, $tap) {
        if ($line =~ /^(not )?ok \d+ - (.*)$/) {
            $seen++;
            Test::More::ok(!$1, "$label: $2");
        } elsif ($line =~ /^#/ && $line !~ /^# ok - /) {
            Test::More::diag($line);
        }
    }
    Test::More::ok(defined $planned && $planned > 0 && $seen == $planned,
       "$label: cmocka ran every test it planned (" . ($planned // 'no plan') . ", saw $seen)");
    Test::More::is($status >> 8, 0, "$label: test binary exited with 0") or Test::More::diag($stderr);
    Test::More::unlike($stderr, qr/Sanitizer|runtime error:/, "$label: no sanitizer reports")
        or Test::More::diag($stderr);
}

sub bail {
    my ($msg) = @_;
    if (Test::More->can('BAIL_OUT')) {
        Test::More::BAIL_OUT($msg);
    }
    die "Bail out! $msg\n";
}

sub need_module {
    my $so = module_so();
    bail("nginx module not built: $so is missing (run `make module`)") unless -f $so;
    return $so;
}

# --- HTTP ------------------------------------------------------------------------------------

# http($method, $url, headers => {...}, content => ..., timeout => s)
# returns {status, reason, headers (lowercased names), content, elapsed}
sub http {
    my ($method, $url, %opt) = @_;
    my $ua = HTTP::Tiny->new(timeout => $opt{timeout} // 10, keep_alive => 0,
                             max_redirect => 0, agent => 'osago-test/1');
    my %args;
    $args{headers} = $opt{headers} if $opt{headers};
    $args{content} = $opt{content} if defined $opt{content};
    my $t0 = time;
    my $res = $ua->request($method, $url, \%args);
    return {
        status  => $res->{status},
        reason  => $res->{reason},
        headers => $res->{headers} || {},
        content => $res->{content} // '',
        elapsed => time - $t0,
    };
}

# raw_http($port, $request_bytes, timeout => s): send bytes as they are (binary header values,
# odd framing) and parse the response the same way as http(). status 599 if nothing came back.
sub raw_http {
    my ($port, $req, %opt) = @_;
    my $timeout = $opt{timeout} // 10;
    my $t0 = time;
    my $s = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port, Proto => 'tcp',
                                Timeout => $timeout)
        or return { status => 599, reason => "connect: $!", headers => {}, content => '',
                    elapsed => time - $t0 };
    binmode $s;
    $s->autoflush(1);
    print {$s} $req;
    my $buf = '';
    my $sel = IO::Select->new($s);
    my $deadline = time + $timeout;
    while (time < $deadline) {
        last unless $sel->can_read($deadline - time);
        my $n = sysread($s, $buf, 65536, length $buf);
        last unless $n;
    }
    close $s;
    my $elapsed = time - $t0;
    my ($head, $body) = split /\r\n\r\n/, $buf, 2;
    return { status => 599, reason => 'no response', headers => {}, content => $buf,
             elapsed => $elapsed }
        unless defined $head && $head =~ m{^HTTP/\d\.\d (\d{3}) ?([^\r\n]*)};
    my ($status, $reason) = ($1, $2);
    my %h;
    for my $line (split /\r\n/, $head) {
        next unless $line =~ /^([^:\s]+):\s*(.*)$/;
        my ($k, $v) = (lc $1, $2);
        if (exists $h{$k}) { $h{$k} = [ ref $h{$k} ? @{$h{$k}} : $h{$k}, $v ] }
        else { $h{$k} = $v }
    }
    $body //= '';
    if (($h{'transfer-encoding'} // '') =~ /chunked/i) {
        my $out = '';
        while ($body =~ s/^([0-9a-fA-F]+)[^\r\n]*\r\n//) {
            my $len = hex $1;
            last if $len == 0;
            $out .= substr($body, 0, $len, '');
            $body =~ s/^\r\n//;
        }
        $body = $out;
    }
    return { status => $status, reason => $reason, headers => \%h, content => $body,
             elapsed => $elapsed };
}

# --- tools -----------------------------------------------------------------------------------

sub osagoctl {
    my ($redis, @args) = @_;
    my $bin = File::Spec->catfile(build_dir(), 'san', 'osagoctl');
    return (127, '', "osagoctl not built: $bin is missing (make build/san/osagoctl)\n")
        unless -x $bin;
    my $addr = ref $redis ? $redis->addr : $redis;
    local $ENV{ASAN_OPTIONS} = $ENV{ASAN_OPTIONS} // 'detect_leaks=1';
    return run_cmd($bin, '--redis', $addr, @args);
}

sub key_hash { sha256_hex($_[0]) }

sub random_key {
    my $k = 'osk_';
    $k .= sprintf '%02x', int rand 256 for 1 .. 24;
    return $k;
}

# add_partner($redis, name => 'p', rate => 20, burst => 40, pool => 'shared', enabled => 1,
#             key => 'optional fixed key') -> the API key
sub add_partner {
    my ($redis, %o) = @_;
    my $name = $o{name} // 'p' . int(rand 1e9);
    my $key  = $o{key}  // random_key();
    my $hash = key_hash($key);
    $redis->cli('HSET', "osago:partner:$hash",
                name    => $name,
                rate    => $o{rate}  // 20,
                burst   => $o{burst} // 40,
                pool    => $o{pool}  // 'shared',
                enabled => $o{enabled} // 1);
    $redis->cli('HSET', 'osago:partners', $name, $hash);
    return $key;
}

# RateLimit-Policy / RateLimit (httpapi ratelimit-headers draft) of a response:
# { policy => {name => 'partner', q => .., w => ..}, limit => {name => 'partner', r => .., t => ..} }
# (a part is undef when its header is missing or unparsable)
sub ratelimit {
    my ($res) = @_;
    my %out;
    for ([policy => 'ratelimit-policy'], [limit => 'ratelimit']) {
        my ($k, $h) = @$_;
        my $v = $res->{headers}{$h};
        $v = $v->[0] if ref $v;
        next unless defined $v && $v =~ /^\s*"([^"]*)"((?:\s*;\s*[a-z]+=[^;,\s]+)*)\s*$/;
        my %p = (name => $1);
        my $params = $2;
        $p{$1} = $2 while $params =~ /;\s*([a-z]+)=([^;,\s]+)/g;
        $out{$k} = \%p;
    }
    return \%out;
}

# Prometheus text exposition -> { 'name{a="x",b="y"}' => value } (labels sorted by name);
# with a second argument, the sum of the series of that metric matching the given labels.
sub prom_parse {
    my ($text) = @_;
    my %m;
    for my $line (split /\n/, $text // '') {
        next if $line =~ /^\s*(#|$)/;
        next unless $line =~ /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)/;
        my ($name, $labels, $v) = ($1, $2 // '', $3);
        my %l;
        $l{$1} = _prom_unescape($2) while $labels =~ /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
        my $k = $name . (%l ? '{' . join(',', map { qq{$_="$l{$_}"} } sort keys %l) . '}' : '');
        $v = $v eq '+Inf' ? 9**9**9 : $v eq '-Inf' ? -9**9**9 : $v;
        $m{$k} = $v + 0;
    }
    return \%m;
}

sub _prom_unescape { my ($v) = @_; $v =~ s/\\(.)/$1 eq 'n' ? "\n" : $1/ge; $v }

# Lines that break the Prometheus text format (0.0.4): bad names, unescaped label values, ...
sub prom_invalid_lines {
    my ($text) = @_;
    my $lv = qr/"(?:[^"\\\n]|\\[\\"n])*"/;
    my $name = qr/[a-zA-Z_:][a-zA-Z0-9_:]*/;
    my $label = qr/[a-zA-Z_][a-zA-Z0-9_]*=$lv/;
    my $num = qr/[-+]?(?:[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?|Inf|NaN)/;
    return grep {
        !/^$/ && !/^# (?:HELP $name .*|TYPE $name (?:counter|gauge|histogram|summary|untyped))$/
              && !/^$name(?:\{(?:$label(?:,$label)*,?)?\})? $num(?: -?\d+)?$/
    } split /\n/, $text // '';
}

# prom_sum($parsed, 'metric', label => value, ...): sum over matching series (undef if none)
sub prom_sum {
    my ($m, $name, %want) = @_;
    my ($sum, $seen);
    for my $k (keys %$m) {
        next unless $k =~ /^\Q$name\E(?:\{(.*)\})?$/;
        my $labels = $1 // '';
        my %l;
        $l{$1} = _prom_unescape($2) while $labels =~ /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;
        next if grep { !defined $l{$_} || $l{$_} ne $want{$_} } keys %want;
        $sum += $m->{$k};
        $seen = 1;
    }
    return $seen ? $sum : undef;
}

# Paced load: flood(url => .., rps => N, duration => s, headers => {..}, keep_alive => 1)
# One request at a time, sent at t0 + i/rps (or at once when behind). Returns
# { results => [ {t => send time relative to t0, status, elapsed, headers, content} ... ],
#   elapsed => last send - first send, sent => n, rps => achieved rate }
sub flood {
    my (%o) = @_;
    my $rps = $o{rps} or croak 'flood: rps';
    my $ua = HTTP::Tiny->new(timeout => $o{timeout} // 5, keep_alive => $o{keep_alive} // 1,
                             agent => 'osago-flood/1');
    my $args = { headers => $o{headers} || {} };
    my @res;
    my $t0 = time;
    my $last = $t0;
    for (my $i = 0; ; $i++) {
        my $target = $t0 + $i / $rps;
        last if $target > $t0 + $o{duration};
        my $now = time;
        sleep($target - $now) if $target > $now;
        my $ts = time;
        my $url = ref $o{url} eq 'CODE' ? $o{url}->($i) : $o{url};
        my $r = $ua->request($o{method} // 'GET', $url, $args);
        my $te = time;
        push @res, { t => $ts - $t0, status => $r->{status}, elapsed => $te - $ts,
                     headers => $r->{headers}, content => $r->{content} };
        $last = $ts;
    }
    my $el = @res ? $res[-1]{t} - $res[0]{t} : 0;
    return { results => \@res, elapsed => $el, sent => scalar @res,
             rps => $el > 0 ? (@res - 1) / $el : 0 };
}

sub median {
    my @s = sort { $a <=> $b } @_;
    return undef unless @s;
    return @s % 2 ? $s[$#s / 2] : ($s[@s / 2 - 1] + $s[@s / 2]) / 2;
}

sub problem {
    my ($res) = @_;
    require JSON::PP;
    my $j = eval { JSON::PP::decode_json($res->{content}) };
    return ref $j eq 'HASH' ? $j : undef;
}

# --- Redis -----------------------------------------------------------------------------------

package OsagoTest::Redis;

use strict;
use warnings;
use Carp qw(croak);
use IO::Select;
use IO::Socket::IP;
use File::Path qw(remove_tree);
use Time::HiRes qw(time sleep);

# new(port => P, password => 'pw' (requirepass; cli and monitor authenticate),
#     db => N (the database cli() and so add_partner() use), unixsocket => 1 (also listen on
#     $r->socket), args => [ more redis-server arguments ])
sub new {
    my ($class, %opt) = @_;
    my $self = bless {
        opt   => \%opt,
        port  => $opt{port} // OsagoTest::free_port(),
        dir   => OsagoTest::_tempdir('redis'),
        owner => $$,
    }, $class;
    OsagoTest::_register($self);
    $self->start;
    return $self;
}

sub port { $_[0]{port} }
sub addr { '127.0.0.1:' . $_[0]{port} }
sub dir  { $_[0]{dir} }
sub pid  { $_[0]{pid} }
sub log  { OsagoTest::_slurp("$_[0]{dir}/redis.log") }

sub start {
    my ($self) = @_;
    croak "redis already running (pid $self->{pid})" if $self->{pid} && OsagoTest::pid_alive($self->{pid});
    my $pidfile = "$self->{dir}/redis.pid";
    unlink $pidfile;
    my @cmd = ($OsagoTest::REDIS, '--port', $self->{port}, '--bind', '127.0.0.1',
               '--save', '', '--appendonly', 'no', '--dir', $self->{dir},
               '--daemonize', 'yes', '--pidfile', $pidfile,
               '--logfile', "$self->{dir}/redis.log",
               (defined $self->{opt}{password} ? ('--requirepass', $self->{opt}{password}) : ()),
               ($self->{opt}{unixsocket}
                    ? ('--unixsocket', $self->socket, '--unixsocketperm', '777') : ()),
               @{ $self->{opt}{args} || [] });
    my ($code, $out, $err) = OsagoTest::run_cmd(@cmd);
    croak "redis-server failed ($code): $out$err" if $code;
    my $ok = OsagoTest::wait_for(sub {
        -s $pidfile && ($self->_cli_raw('PING'))[1] =~ /PONG/ }, 10);
    # stop() ends what started, answering or not
    ($self->{pid}) = (OsagoTest::_slurp($pidfile) // '') =~ /(\d+)/;
    croak "redis on port $self->{port} did not answer PING:\n" . $self->log unless $ok;
    $self->{paused} = 0;
    return $self;
}

# unix socket path (with unixsocket => 1)
sub socket { "$_[0]{dir}/redis.sock" }

sub _cli_raw {
    my ($self, @args) = @_;
    my @auth = defined $self->{opt}{password}
             ? ('-a', $self->{opt}{password}, '--no-auth-warning') : ();
    my @db = defined $self->{opt}{db} ? ('-n', $self->{opt}{db}) : ();
    return OsagoTest::run_cmd($OsagoTest::REDIS_CLI, '-h', '127.0.0.1', '-p', $self->{port},
                              @auth, @db, @args);
}

# cli(@args): stdout chomped (list context: lines)
sub cli {
    my ($self, @args) = @_;
    my ($code, $out) = $self->_cli_raw(@args);
    chomp $out;
    return wantarray ? split(/\n/, $out) : $out;
}

# monitor(sub { ... }, settle => s): the commands Redis received while the code ran and for
# `settle` seconds after (0.2 unless given), from MONITOR, as [ [client, command, args...], ... ];
# client is "lua" for commands a script called; with times => 1 each entry starts with the time
# Redis ran it ([ epoch seconds, client, command, args... ]). Redis may still hold the end of that output when
# the time is up (a busy machine, a large capture): an ECHO sent last marks where it ends, and
# the capture is read up to it.
sub monitor {
    my ($self, $code, %o) = @_;
    my $s = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $self->{port}, Proto => 'tcp',
                                Timeout => 2) or croak "monitor: connect: $!";
    my $sel = IO::Select->new($s);
    my $buf = '';
    if (defined $self->{opt}{password}) {
        print {$s} "AUTH $self->{opt}{password}\r\n";
        while ($buf !~ /\r\n/) {
            $sel->can_read(2) or croak 'monitor: no answer to AUTH';
            sysread($s, $buf, 4096, length $buf) or croak 'monitor: closed';
        }
        $buf = '';
    }
    print {$s} "MONITOR\r\n";
    while ($buf !~ /\r\n/) {
        $sel->can_read(2) or croak 'monitor: no +OK';
        sysread($s, $buf, 4096, length $buf) or croak 'monitor: closed';
    }
    $code->();
    my $deadline = time + ($o{settle} // 0.2);
    while (time < $deadline) {
        next unless $sel->can_read($deadline - time);
        sysread($s, $buf, 65536, length $buf) or last;
    }
    my $mark = sprintf 'osago-monitor-end-%d-%.6f', $$, time;
    $self->cli('ECHO', $mark);
    my $cap = time + 15;
    while (index($buf, $mark) < 0 && time < $cap) {
        next unless $sel->can_read($cap - time);
        sysread($s, $buf, 65536, length $buf) or last;
    }
    close $s;
    croak "monitor: the capture's end mark never came" if index($buf, $mark) < 0;
    my @cmds;
    for my $line (split /\r\n/, $buf) {
        last if index($line, $mark) >= 0;
        next unless $line =~ /^\+(\d+\.\d+) \[\d+ ([^\]]+)\] (.*)$/;
        my ($at, $client, $rest) = ($1, $2, $3);
        my @args = $rest =~ /"((?:[^"\\]|\\.)*)"/g;
        $args[0] = lc $args[0] if @args;
        push @cmds, [ ($o{times} ? ($at) : ()), $client =~ /lua/ ? 'lua' : $client, @args ];
    }
    return \@cmds;
}

sub pause {
    my ($self) = @_;
    kill 'STOP', $self->{pid} or croak "SIGSTOP $self->{pid}: $!";
    $self->{paused} = 1;
}

sub resume {
    my ($self) = @_;
    kill 'CONT', $self->{pid} or croak "SIGCONT $self->{pid}: $!";
    $self->{paused} = 0;
}

sub running { my $p = $_[0]{pid}; $p && OsagoTest::pid_alive($p) }

sub stop {
    my ($self) = @_;
    my $pid = $self->{pid} or return;
    if (OsagoTest::pid_alive($pid)) {
        kill 'CONT', $pid if $self->{paused};
        kill 'TERM', $pid;    # --save '' : exits without writing anything
        unless (OsagoTest::wait_for(sub { !OsagoTest::pid_alive($pid) }, 5)) {
            kill 'KILL', $pid;
            OsagoTest::wait_for(sub { !OsagoTest::pid_alive($pid) }, 5);
        }
    }
    OsagoTest::wait_for(sub { !OsagoTest::port_open($self->{port}) }, 2);
    delete $self->{pid};
    $self->{paused} = 0;
}

sub DESTROY {
    my ($self) = @_;
    return unless $self->{owner} && $self->{owner} == $$;
    local ($?, $!, $@);
    eval { $self->stop };
    remove_tree($self->{dir}) if $self->{dir} && -d $self->{dir} && !$ENV{OSAGO_KEEP};
}

# --- nginx -----------------------------------------------------------------------------------

package OsagoTest::Nginx;

use strict;
use warnings;
use Carp qw(croak);
use File::Path qw(remove_tree make_path);
use Time::HiRes qw(time sleep);

# Substitute %%PORT%%, %%PORT2%%, %%PORTn%%, %%REDIS%% and write PREFIX/conf/nginx.conf.
sub _write_conf {
    my ($self, %opt) = @_;
    my $prefix = $self->{prefix};
    make_path("$prefix/conf", "$prefix/logs", "$prefix/html", map { "$prefix/tmp/$_" }
              qw(client_body proxy fastcgi uwsgi scgi));
    chmod 0755, "$prefix/$_" for qw(conf logs html tmp);
    my $module = $opt{module} // 1;
    my $load = '';
    if ($module) {
        my $so = OsagoTest::need_module();
        $load = "load_module $so;\n";
    }
    my $workers = $opt{workers} // 1;
    my $conf = <<"CONF";
${load}daemon on;
master_process on;
worker_processes $workers;
pid $prefix/logs/nginx.pid;
error_log $prefix/logs/error.log info;
$opt{main}

events {
    worker_connections 4096;
$opt{events}
}

http {
    access_log off;
    client_body_temp_path $prefix/tmp/client_body;
    proxy_temp_path       $prefix/tmp/proxy;
    fastcgi_temp_path     $prefix/tmp/fastcgi;
    uwsgi_temp_path       $prefix/tmp/uwsgi;
    scgi_temp_path        $prefix/tmp/scgi;

$opt{http}
}
CONF
    $conf =~ s/%%PORT(\d*)%%/$self->_port($1 || 1)/ge;
    if ($conf =~ /%%REDIS%%/) {
        croak "config uses %%REDIS%% but no redis => object was given" unless $opt{redis};
        my $addr = ref $opt{redis} ? $opt{redis}->addr : $opt{redis};
        $conf =~ s/%%REDIS%%/$addr/g;
    }
    OsagoTest::_spew("$prefix/conf/nginx.conf", $conf);
    for my $f (sort keys %{ $opt{files} || {} }) {
        croak "files: relative paths under the prefix only: $f" if $f =~ m{^/|\.\.};
        my $path = "$prefix/$f";
        (my $dir = $path) =~ s{/[^/]*$}{};
        make_path($dir);
        chmod 0755, $dir;
        OsagoTest::_spew($path, $opt{files}{$f});
        chmod 0644, $path;
    }
    $self->{conf} = $conf;
    return $conf;
}

sub _port {
    my ($self, $n) = @_;
    return $self->{ports}{$n} //= OsagoTest::free_port();
}

sub new {
    my ($class, %opt) = @_;
    $opt{$_} //= '' for qw(http main events);
    my $self = bless { opt => \%opt, prefix => OsagoTest::_tempdir('nginx'), owner => $$,
                       ports => {} }, $class;
    $self->{ports}{1} = $opt{port} if $opt{port};
    OsagoTest::_register($self);
    $self->_write_conf(%opt);
    $self->start;
    return $self;
}

sub port   { $_[0]->_port(1) }
sub port2  { $_[0]->_port(2) }
sub port_n { $_[0]->_port($_[1]) }    # the port of %%PORTn%%
sub prefix { $_[0]{prefix} }
sub conf   { $_[0]{conf} }
sub url    { my ($self, $path) = @_; 'http://127.0.0.1:' . $self->port . ($path // '/') }
sub error_log { OsagoTest::_slurp("$_[0]{prefix}/logs/error.log") }

sub _cmd {
    my ($self, @extra) = @_;
    my $p = $self->{prefix};
    return ($OsagoTest::NGINX, '-p', "$p/", '-c', "$p/conf/nginx.conf", '-e', "$p/logs/error.log",
            @extra);
}

sub master_pid {
    my ($self) = @_;
    my ($pid) = OsagoTest::_slurp("$self->{prefix}/logs/nginx.pid") =~ /(\d+)/;
    return $pid;
}

sub start {
    my ($self) = @_;
    my ($code, $out, $err) = OsagoTest::run_cmd($self->_cmd);
    if ($code) {
        croak "nginx failed to start (exit $code): $out$err\n--- error.log:\n" . $self->error_log
            . "\n--- nginx.conf:\n$self->{conf}";
    }
    my $ok = OsagoTest::wait_for(sub { $self->master_pid }, 10);
    croak "nginx wrote no pid file\n" . $self->error_log unless $ok;
    $self->{pid} = $self->master_pid;
    my $up = OsagoTest::wait_for(sub { OsagoTest::port_open($self->port) }, 10);
    croak "nginx is not accepting on port " . $self->port . "\n" . $self->error_log unless $up;
    my $workers = $self->{opt}{workers} // 1;
    OsagoTest::wait_for(sub { $self->worker_pids >= $workers }, 5);
    return $self;
}

sub _children {
    my ($ppid) = @_;
    my @kids;
    opendir my $dh, '/proc' or return;
    for my $p (grep { /^\d+$/ } readdir $dh) {
        my $stat = OsagoTest::_slurp("/proc/$p/stat");
        next unless $stat =~ /\)\s+(\S)\s+(\d+)/;
        next if $1 eq 'Z';
        push @kids, $p if $2 == $ppid;
    }
    return @kids;
}

sub _cmdline { my $c = OsagoTest::_slurp("/proc/$_[0]/cmdline"); $c =~ tr/\0/ /; $c }

# Current worker processes (not the ones shutting down after a reload).
sub worker_pids {
    my ($self) = @_;
    my $m = $self->{pid} // $self->master_pid or return;
    my @w = sort { $a <=> $b }
            grep { my $c = _cmdline($_); $c =~ /worker process/ && $c !~ /shutting down/ }
            _children($m);
    return @w;
}

sub all_children {
    my ($self) = @_;
    my $m = $self->{pid} or return;
    my @k = _children($m);
    return @k;
}

sub reload {
    my ($self, %opt) = @_;
    if (defined $opt{http} || defined $opt{main} || defined $opt{events}) {
        my %o = (%{ $self->{opt} }, %opt);
        $self->{opt} = \%o;
        $self->_write_conf(%o);
    }
    my %old = map { $_ => 1 } $self->worker_pids;
    my $n = $self->{opt}{workers} // 1;
    kill 'HUP', $self->{pid} or croak "SIGHUP $self->{pid}: $!";
    my $ok = OsagoTest::wait_for(sub { (grep { !$old{$_} } $self->worker_pids) >= $n }, 10);
    croak "nginx reload: new workers did not come up\n" . $self->error_log unless $ok;
    # and let the old ones finish (test clients do not keep connections alive)
    OsagoTest::wait_for(sub { !grep { OsagoTest::pid_alive($_) } keys %old }, 5);
    return $self;
}

sub stop {
    my ($self) = @_;
    my $pid = $self->{pid} or return;
    my @kids = $self->all_children;
    if (OsagoTest::pid_alive($pid)) {
        kill 'QUIT', $pid;
        unless (OsagoTest::wait_for(sub { !OsagoTest::pid_alive($pid) }, 10)) {
            kill 'TERM', $pid;
            unless (OsagoTest::wait_for(sub { !OsagoTest::pid_alive($pid) }, 5)) {
                kill 'KILL', $pid;
                OsagoTest::wait_for(sub { !OsagoTest::pid_alive($pid) }, 5);
            }
        }
    }
    # workers of a master that had to be killed would linger: end them by their own pids
    for my $k (@kids) {
        next unless OsagoTest::pid_alive($k) && _cmdline($k) =~ /^nginx:/;
        kill 'KILL', $k;
    }
    OsagoTest::wait_for(sub { !grep { OsagoTest::pid_alive($_) } @kids }, 5);
    delete $self->{pid};
}

sub running { my $p = $_[0]{pid}; $p && OsagoTest::pid_alive($p) }

sub DESTROY {
    my ($self) = @_;
    return unless $self->{owner} && $self->{owner} == $$;
    local ($?, $!, $@);
    eval { $self->stop };
    remove_tree($self->{prefix}) if $self->{prefix} && -d $self->{prefix} && !$ENV{OSAGO_KEEP};
}

# check_config($http_text, %opt) -> ($exit_code, $output) of `nginx -t`
sub check_config {
    my ($class, $http, %opt) = @_;
    $opt{$_} //= '' for qw(main events);
    $opt{http} = $http // '';
    my $self = bless { opt => \%opt, prefix => OsagoTest::_tempdir('nginx-t'), owner => $$,
                       ports => {} }, $class;
    $self->_write_conf(%opt);
    my ($code, $out, $err) = OsagoTest::run_cmd($self->_cmd('-t'));
    my $output = $err . $out;
    delete $self->{owner};    # nothing running; just remove the prefix
    remove_tree($self->{prefix}) unless $ENV{OSAGO_KEEP};
    return ($code, $output);
}

# --- a tiny upstream ---------------------------------------------------------------------------

# OsagoTest::Backend->new: a forked HTTP/1.0 server on a free 127.0.0.1 port. For every request
# it answers 200 with a JSON object: method, uri, length and sha256 of the body, and the request
# headers (lowercased names). Stopped by its pid.
package OsagoTest::Backend;

use strict;
use warnings;
use Carp qw(croak);
use Digest::SHA qw(sha256_hex);
use IO::Socket::IP;
use POSIX ();

sub new {
    my ($class, %opt) = @_;
    my $port = $opt{port} // OsagoTest::free_port();
    my $srv = IO::Socket::IP->new(LocalHost => '127.0.0.1', LocalPort => $port, Listen => 128,
                                  ReuseAddr => 1, Proto => 'tcp') or croak "backend listen: $!";
    my $pid = fork // croak "fork: $!";
    if (!$pid) {
        $SIG{$_} = 'DEFAULT' for qw(INT TERM HUP);
        require JSON::PP;
        while (my $c = $srv->accept) {
            binmode $c;
            my $buf = '';
            while ($buf !~ /\r\n\r\n/) { sysread($c, $buf, 65536, length $buf) or last }
            my ($head, $body) = split /\r\n\r\n/, $buf, 2;
            $body //= '';
            my ($method, $uri) = ($head // '') =~ /^(\S+) (\S+)/;
            my %h;
            for (split /\r\n/, $head // '') { $h{ lc $1 } = $2 if /^([^:\s]+):\s*(.*)$/ }
            my $len = $h{'content-length'} // 0;
            while (length($body) < $len) { sysread($c, $body, 65536, length $body) or last }
            my $out = JSON::PP->new->canonical->encode({
                method => $method, uri => $uri, length => length($body),
                sha256 => sha256_hex($body), headers => \%h });
            print {$c} "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n"
                     . "Content-Length: " . length($out) . "\r\nConnection: close\r\n\r\n$out";
            close $c;
        }
        POSIX::_exit(0);
    }
    close $srv;
    my $self = bless { port => $port, pid => $pid, owner => $$ }, $class;
    OsagoTest::_register($self);
    return $self;
}

sub port { $_[0]{port} }

sub stop {
    my ($self) = @_;
    my $pid = delete $self->{pid} or return;
    kill 'TERM', $pid;
    waitpid($pid, 0);
}

sub DESTROY {
    my ($self) = @_;
    return unless $self->{owner} && $self->{owner} == $$;
    local ($?, $!, $@);
    $self->stop;
}

# Stop everything still running if the test is interrupted, and before global destruction
# (where DESTROY would run with half the modules gone).
package OsagoTest;

use Scalar::Util qw(weaken refaddr);
our %LIVE;
sub _register { my ($o) = @_; $LIVE{ refaddr $o } = $o; weaken $LIVE{ refaddr $o }; }

END {
    local ($?, $!, $@);
    for my $o (grep { defined } values %LIVE) {
        $o->DESTROY;
        $o->{owner} = 0;
    }
}

for my $sig (qw(INT TERM HUP)) {
    $SIG{$sig} = sub { die "caught SIG$sig\n" } unless $SIG{$sig};
}
# a peer that closed first (a write to a socket or pipe) is an error to handle, not a death
# that skips END and leaves the test's daemons running
$SIG{PIPE} = 'IGNORE' unless $SIG{PIPE};

1;
