#!/usr/bin/perl
# osago-worker end to end, with real PostgreSQL, Redis, Kafka (devbroker) and insurer-sim:
# migrations (idempotent), intake stream -> completed with a quote per insurer in PostgreSQL and
# in the read model, one PUBLISH per read-model change, XACK only after the row exists, the
# Kafka events of DESIGN.md, /healthz, /readyz, /metrics, malformed stream entries.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use JSON::PP ();
use File::Copy ();
use File::Temp ();
use Time::HiRes qw(time sleep);
use OsagoTest;
use OsagoStack;

OsagoStack::need_bins(qw(devbroker insurer-sim osago-worker));

my $T0 = time;
my $J  = JSON::PP->new->utf8->canonical;
my @CODES = qw(alfa ingos reso vsk rosgosstrakh null);   # "null": a code, not SQL NULL
my $N = 8;    # applications in the main batch

my $pg  = OsagoStack::Postgres->new;
my $r   = OsagoTest::Redis->new;
my $kb  = OsagoStack::Devbroker->new;
my $sim = OsagoStack::InsurerSim->new(insurers => \@CODES, latency => '20-50');
my %NAME = map { $_->{code} => $_->{name} } @{ $sim->insurers };

# --- migrations ---------------------------------------------------------------------------------
my @files = sort glob(OsagoTest::root() . '/worker/migrations/*.sql');
my ($code, $out, $err) = OsagoStack::Worker->migrate($pg);
is($code, 0, 'migrate: exit 0') or diag "$out$err";
for my $t (qw(applications quotes)) {
    is(scalar $pg->psql("SELECT to_regclass('public.$t') IS NOT NULL"), 't', "table $t exists");
}
my ($mtable) = $pg->psql("SELECT table_name FROM information_schema.tables WHERE table_schema ="
                         . " 'public' AND table_name NOT IN ('applications', 'quotes') ORDER BY 1");
ok($mtable, "the applied versions are recorded in a table ($mtable)") or diag $pg->psql('\dt');
$mtable //= 'schema_migrations';
my @applied1 = $pg->psql("SELECT * FROM $mtable ORDER BY 1");
is(scalar @applied1, scalar @files, scalar(@files) . ' migration(s) recorded, one per file')
    or diag explain \@applied1;
my $schema = sub {
    join "\n", $pg->psql("SELECT table_name, column_name, data_type, is_nullable,"
                         . " coalesce(column_default, '') FROM information_schema.columns"
                         . " WHERE table_schema = 'public' ORDER BY 1, 2");
};
my $schema1 = $schema->();
($code, $out, $err) = OsagoStack::Worker->migrate($pg);
is($code, 0, 'migrate again: exit 0') or diag "$out$err";
is_deeply([ $pg->psql("SELECT * FROM $mtable ORDER BY 1") ], \@applied1,
          'the second run applied nothing (the recorded versions are unchanged)');
is($schema->(), $schema1, 'and the schema is unchanged');
# A database that cannot hold Cyrillic would refuse such payloads one by one, each taken for a
# bad entry: migrate refuses the database instead.
$pg->psql("CREATE DATABASE osago_ascii OWNER osago ENCODING 'SQL_ASCII' TEMPLATE template0",
          user => 'postgres', db => 'postgres');
(my $ascii = $pg->conninfo) =~ s/dbname=osago\b/dbname=osago_ascii/;
($code, $out, $err) = OsagoStack::Worker->migrate($ascii);
isnt($code, 0, 'migrate into a SQL_ASCII database: refused');
like("$out$err", qr/"event":"migrate_encoding".*encoding is SQL_ASCII; osago needs UTF8/,
     '  with the reason logged');
is(scalar $pg->psql("SELECT to_regclass('public.applications') IS NULL", db => 'osago_ascii'),
   't', '  and no table created there');
# A migration of comments only (a placeholder, a body commented out) is applied and recorded:
# PostgreSQL answers it with an empty query, which is no error.
{
    my $dir = File::Temp::tempdir('osago-migrations-XXXXXX', DIR => '/tmp', CLEANUP => 1);
    File::Copy::copy($_, $dir) or die "copy $_: $!" for @files;
    OsagoTest::_spew("$dir/900_placeholder.sql", "-- nothing yet: the next release fills this\n");
    $pg->psql("CREATE DATABASE osago_placeholder OWNER osago", user => 'postgres', db => 'postgres');
    (my $ph = $pg->conninfo) =~ s/dbname=osago\b/dbname=osago_placeholder/;
    ($code, $out, $err) = OsagoStack::Worker->migrate($ph, migrations => $dir);
    is($code, 0, 'migrate with a comments-only file: exit 0') or diag "$out$err";
    is(scalar $pg->psql("SELECT count(*) FROM $mtable WHERE version = 900", db => 'osago_placeholder'),
       1, '  and the file is recorded as applied');
}

# --- the worker -----------------------------------------------------------------------------------
my $sub = OsagoStack::RedisWatch->new($r, 'SUBSCRIBE', 'osago:app-updates');
my $mon = OsagoStack::RedisWatch->new($r, 'MONITOR');
my $w = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $sim,
                                name => 'e2e-1');
is($w->healthz, 200, '/healthz 200');
ok(OsagoStack::wait_until(sub { $w->readyz == 200 }, 15, 0.1), '/readyz 200 (Redis, Kafka, PG up)');
my $m0 = $w->metrics;
ok(scalar(keys %$m0), '/metrics answers in the Prometheus text format')
    or diag $w->metrics_text;
is_deeply([ OsagoTest::prom_invalid_lines($w->metrics_text) ], [], 'no invalid exposition lines');

my %trace;      # app id -> traceparent of its stream entry
my %payload;    # app id -> payload (canonical JSON)
my @ids;

# --- XACK only after the applications row exists -------------------------------------------------
# A transaction holds an EXCLUSIVE lock on applications (reads pass, inserts wait): the relay has
# read the entry, cannot insert its row, and must not acknowledge it.
{
    my $lockfile = "$pg->{dir}/lock.out";
    my ($lpid) = OsagoStack::_spawn(
        cmd => [ 'psql', '-X', '-q', '-h', '127.0.0.1', '-p', $pg->port, '-U', 'osago', '-d', 'osago',
                 '-c', 'BEGIN; LOCK TABLE applications IN EXCLUSIVE MODE; SELECT pg_sleep(30); COMMIT;' ],
        stderr => $lockfile, stdout => $lockfile);
    my $locked = OsagoStack::wait_until(sub {
        scalar $pg->psql("SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
                         . " WHERE c.relname = 'applications' AND l.mode = 'ExclusiveLock'"
                         . " AND l.granted") }, 5, 0.05);
    ok($locked, 'applications locked by another transaction (up to 30 s: ended once observed)');
    my $locked_at = time;
    my ($id, $entry, $p, $tp) = OsagoStack::intake_entry($r);
    push @ids, $id;
    ($trace{$id}, $payload{$id}) = ($tp, $p);
    ok(OsagoStack::wait_until(sub { OsagoStack::pending_count($r) == 1 }, 10, 0.05),
       'the relay took the entry (XPENDING 1)');
    my ($still, $row) = (1, 0);
    for (1 .. 10) {
        $still &&= OsagoStack::pending_count($r) == 1;
        $row ||= $pg->psql("SELECT count(*) FROM applications WHERE id = '$id'");
        sleep 0.1;
    }
    ok($still && !$row, 'while the row cannot be written: no row and the entry stays pending');
    cmp_ok(time - $locked_at, '<', 25, '  (observed while the lock was still held)');
    # the observation is made: the lock goes now rather than at the end of its sleep
    $pg->psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE wait_event = 'PgSleep'");
    ok(OsagoStack::wait_until(sub {
           !OsagoTest::pid_alive($lpid) && OsagoStack::pending_count($r) == 0 }, 20, 0.05),
       'lock released: the entry is acknowledged (XPENDING 0)');
    waitpid($lpid, 0);
    is(scalar $pg->psql("SELECT count(*) FROM applications WHERE id = '$id'"), 1,
       'and its row is there');
    my @acks = grep { $_->{cmd} eq 'xack' && grep { $_ eq $entry } @{ $_->{args} } } @{ $mon->monitor };
    is(scalar @acks, 1, "entry $entry acknowledged exactly once");
}

# --- the batch, with two malformed entries among the good ones ----------------------------------
my @bad;
for my $i (1 .. $N) {
    my ($id, $entry, $p, $tp) = OsagoStack::intake_entry($r, payload => {
        vehicle => { power_hp => 60 + 20 * $i }, owner => { region_code => (qw(77 78 50 16))[$i % 4] } });
    push @ids, $id;
    ($trace{$id}, $payload{$id}) = ($tp, $p);
    if ($i == 3) {
        my $bad_id = OsagoStack::uuid7();
        push @bad, { what => 'payload that is not JSON', app_id => $bad_id,
                     entry => OsagoStack::raw_entry($r, app_id => $bad_id, partner => 'acme',
                                                    payload => '{"vehicle":', trace => OsagoStack::traceparent()) };
    }
    if ($i == 4) {
        # JSON the edge would refuse, deeper than the event codec carries: refused at intake,
        # where it can be acknowledged, not in a produce batch that would fail on every retry
        my $deep_id = OsagoStack::uuid7();
        push @bad, { what => 'payload nested 70 levels deep', app_id => $deep_id, reason => qr/deeper than 64/,
                     entry => OsagoStack::raw_entry($r, app_id => $deep_id, partner => 'acme',
                                                    payload => '{"a":' x 70 . '1' . '}' x 70,
                                                    trace => OsagoStack::traceparent()) };
        my $utf_id = OsagoStack::uuid7();
        push @bad, { what => 'payload with invalid UTF-8', app_id => $utf_id, reason => qr/UTF-?8/i,
                     entry => OsagoStack::raw_entry($r, app_id => $utf_id, partner => 'acme',
                                                    payload => qq({"owner":{"name":"\xff\xfe"}}),
                                                    trace => OsagoStack::traceparent()) };
    }
    if ($i == 5) {
        # 59 bytes whose numbers PostgreSQL would write back out as 655 kB, which the sweeper
        # could not carry in an event if it ever had to re-drive the application
        my $wide_id = OsagoStack::uuid7();
        push @bad, { what => 'payload with numbers of 131,001 digits', app_id => $wide_id,
                     reason => qr/over 524288 bytes with its numbers written out/,
                     entry => OsagoStack::raw_entry($r, app_id => $wide_id, partner => 'acme',
                                                    payload => '{"x":[' . join(',', ('1e131000') x 5) . ']}',
                                                    trace => OsagoStack::traceparent()) };
    }
    if ($i == 6) {
        push @bad, { what => 'entry without app_id and payload',
                     entry => OsagoStack::raw_entry($r, partner => 'acme', junk => 'x') };
    }
}
my $done = OsagoStack::wait_completed($pg, \@ids, 60);
ok($done, sprintf('all %d applications completed in PostgreSQL (%.1f s since start)',
                  scalar @ids, time - $T0))
    or diag explain [ $pg->psql('SELECT id, status FROM applications') ];
# the last PUBLISH may trail the PostgreSQL commit
OsagoStack::wait_until(sub {
    !grep { (OsagoStack::read_model($r, $_)->{doc}{status} // '') ne 'completed' } @ids }, 10, 0.1);
sleep 0.5;

# --- PostgreSQL: the application and one ok quote per insurer ----------------------------------
my $q = OsagoStack::quotes_of($pg, \@ids);
my (@app_bad, @q_bad);
for my $id (@ids) {
    my $a = OsagoStack::application($pg, $id);
    if (!$a) { push @app_bad, "$id: no row"; next }
    push @app_bad, "$id: status $a->{status}" unless $a->{status} eq 'completed';
    push @app_bad, "$id: partner $a->{partner}" unless $a->{partner} eq 'acme';
    push @app_bad, "$id: payload differs"
        unless $J->encode($a->{payload} // {}) eq $J->encode($J->decode($payload{$id}));
    my @codes = sort keys %{ $q->{$id} || {} };
    push @q_bad, "$id: insurers @codes" unless "@codes" eq join(' ', sort @CODES);
    for my $c (@codes) {
        my $x = $q->{$id}{$c};
        push @q_bad, "$id/$c: " . $J->encode($x)
            unless $x->{status} eq 'ok' && defined $x->{premium} && $x->{premium} > 0
                && $x->{attempt} == 1 && !defined $x->{error};
    }
}
ok(!@app_bad, 'every application row: completed, partner, the payload of its entry')
    or diag join "\n", @app_bad;
ok(!@q_bad, 'a quote per insurer: status ok, premium > 0, attempt 1, no error')
    or diag join "\n", @q_bad;
my %prem_spread;
for my $id (@ids) { $prem_spread{ $q->{$id}{$_}{premium} }++ for keys %{ $q->{$id} } }
cmp_ok(scalar keys %prem_spread, '>', 5, 'premiums differ by insurer and application');

# The claim, the heartbeat and the result change no indexed column of quotes: each update stays
# on its page and writes no index entry (HOT). The counters reach pg_stat when the worker's
# sessions go idle, within seconds. An update that changed an indexed column would never be HOT;
# a page still full of versions not yet pruned makes some of the others not HOT either, more of
# them on a loaded machine (89 % with both cores busy besides the tests), hence 75 %.
my ($upd, $hot) = (0, 0);
OsagoStack::wait_until(sub {
    ($upd, $hot) = split /\|/, scalar $pg->psql("SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables"
                                               . " WHERE relname = 'quotes'");
    $upd >= 2 * @ids * @CODES;
}, 20, 0.2);
cmp_ok($upd, '>=', 2 * @ids * @CODES, 'quote updates counted: a claim and a result per quote');
cmp_ok($hot, '>=', 0.75 * $upd, 'at least 75 % of them HOT (no index entry written)')
    or diag "$hot of $upd updates HOT";

# --- the read model ---------------------------------------------------------------------------------
my @rm_bad;
for my $id (@ids) {
    my $rm = OsagoStack::read_model($r, $id);
    my $d = $rm->{doc} || {};
    push @rm_bad, "$id: status " . ($d->{status} // 'none') unless ($d->{status} // '') eq 'completed';
    push @rm_bad, "$id: id $d->{id}" unless ($d->{id} // '') eq $id;
    push @rm_bad, "$id: owner " . ($rm->{owner} // 'none') unless ($rm->{owner} // '') eq 'acme';
    push @rm_bad, "$id: updated_at not ms" unless ($d->{updated_at} // '') =~ /^\d{13}$/
        && ($rm->{doc_raw} // '') =~ /"updated_at":\d{13}[,}]/;
    push @rm_bad, "$id: hash updated_at" unless ($rm->{updated_at} // '') eq ($d->{updated_at} // '-');
    push @rm_bad, "$id: created_at" unless ($d->{created_at} // '') =~ /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/;
    push @rm_bad, "$id: ttl $rm->{ttl}" unless $rm->{ttl} > 6 * 86400 && $rm->{ttl} <= 7 * 86400;
    my @ins = @{ $d->{insurers} || [] };
    push @rm_bad, "$id: insurers " . join(',', map { $_->{code} } @ins) . " (want @CODES, file order)"
        unless join(',', map { $_->{code} // '' } @ins) eq join(',', @CODES);
    for my $i (@ins) {
        my $x = $q->{$id}{ $i->{code} // '' } || {};
        push @rm_bad, "$id/$i->{code}: " . $J->encode($i)
            unless ($i->{status} // '') eq 'ok' && ($i->{name} // '') eq $NAME{ $i->{code} }
                && defined $i->{premium_rub} && !ref $i->{premium_rub}
                && abs($i->{premium_rub} - ($x->{premium} // -1)) < 0.005
                && exists $i->{error} && !defined $i->{error};
    }
}
ok(!@rm_bad, 'read model: completed, every insurer in file order with names, premiums as in'
             . ' PostgreSQL, updated_at in ms, TTL 7 days') or diag join "\n", @rm_bad;

# --- one PUBLISH per change ---------------------------------------------------------------------
my $cmds = $mon->monitor;
my $msgs = $sub->messages;
my (%writes, %pubs, %heard, @pub_bad);
for my $c (@$cmds) {
    next if $c->{client} ne 'lua' && $c->{cmd} ne 'publish' && $c->{cmd} ne 'hset';
    if ($c->{cmd} eq 'hset' && ($c->{args}[0] // '') =~ /^osago:app:(.+)$/) {
        my %f = @{ $c->{args} }[ 1 .. $#{ $c->{args} } ];
        push @{ $writes{$1} }, \%f;
    } elsif ($c->{cmd} eq 'publish') {
        push @pub_bad, "PUBLISH on $c->{args}[0]" unless $c->{args}[0] eq 'osago:app-updates';
        my ($id, $u) = split / /, $c->{args}[1] // '';
        push @{ $pubs{$id} }, $u;
    }
}
for my $m (@$msgs) {
    my ($id, $u) = split / /, $m->[1];
    push @{ $heard{$id} }, $u;
}
my $total_pub = 0;
for my $id (@ids) {
    my @p = @{ $pubs{$id} || [] };
    $total_pub += @p;
    my @wr = grep { exists $_->{doc} } @{ $writes{$id} || [] };
    shift @wr if @wr && $wr[0]{doc} =~ /"status":"accepted"/ && $wr[0]{doc} =~ /"insurers":\[\]/;  # ours
    my $final = OsagoStack::read_model($r, $id)->{doc}{updated_at} // '';
    # in progress, then completed; or completed alone, when Started and every result reached
    # results in one batch (a loaded machine): one change, one PUBLISH
    push @pub_bad, "$id: no publish" if @p < 1;
    push @pub_bad, "$id: " . scalar(@wr) . ' read-model writes but ' . scalar(@p) . ' publishes'
        if @wr != @p;
    push @pub_bad, "$id: publish/write updated_at mismatch: [@p] vs ["
        . join(' ', map { $_->{updated_at} } @wr) . ']'
        if join(' ', @p) ne join(' ', map { $_->{updated_at} // '' } @wr);
    push @pub_bad, "$id: updated_at not strictly increasing: @p"
        if grep { !($p[$_] =~ /^\d+$/ && ($_ == 0 || $p[$_] > $p[$_ - 1])) } 0 .. $#p;
    my %seen_doc;
    push @pub_bad, "$id: the same document written twice"
        if grep { $seen_doc{ $_->{doc} }++ } @wr;
    push @pub_bad, "$id: last publish $p[-1], final doc $final" if @p && $p[-1] ne $final;
    push @pub_bad, "$id: subscriber heard [@{ $heard{$id} || [] }], published [@p]"
        if join(' ', @{ $heard{$id} || [] }) ne join(' ', @p);
}
ok(!@pub_bad, "one PUBLISH \"{id} {updated_at}\" per read-model change, updated_at increasing,"
              . " heard by a subscriber ($total_pub for " . scalar(@ids) . ' applications)')
    or diag join "\n", @pub_bad;
my @stray = grep { my $id = $_; !grep { $_ eq $id } @ids } keys %heard;
ok(!@stray, 'no PUBLISH for anything else') or diag "@stray";

# --- intake: acknowledged, malformed entries logged and acknowledged ----------------------------
is(OsagoStack::pending_count($r), 0, 'XPENDING 0: every entry acknowledged');
my %acked;
for my $c (grep { $_->{cmd} eq 'xack' } @$cmds) { $acked{$_}++ for @{ $c->{args} }[ 2 .. $#{ $c->{args} } ] }
my @not_once = grep { ($acked{$_} // 0) != 1 } keys %acked;
ok(!@not_once, 'no entry acknowledged twice') or diag "@not_once";
is(scalar keys %acked, @ids + @bad, 'every entry (' . (@ids + @bad) . ') acknowledged (XACK)');
my $logs = $w->log_lines;
for my $b (@bad) {
    my @hits = grep { my $l = $_; grep { defined && index($_, $b->{entry}) >= 0 } values %$l } @$logs;
    ok(@hits && (grep { ($_->{level} // '') =~ /^(warn|error)$/ && length($_->{msg} // '') > 10 } @hits),
       "malformed entry ($b->{what}): logged at warn/error with a reason, naming entry $b->{entry}")
        or diag explain [ grep { ($_->{level} // '') ne 'debug' } @$logs[0 .. ($#$logs > 40 ? 40 : $#$logs)] ];
    diag "  logged: $hits[0]{msg}" if @hits;
    like(join(' ', map { $_->{msg} // '' } @hits), $b->{reason}, '  and the reason names the fault')
        if $b->{reason};
    is(scalar $pg->psql("SELECT count(*) FROM applications WHERE id = '$b->{app_id}'"), 0,
       'and no application row for it') if $b->{app_id};
    my @acks = grep { $_->{cmd} eq 'xack' && grep { $_ eq $b->{entry} } @{ $_->{args} } } @$cmds;
    is(scalar @acks, 1, '  and acknowledged once');
}
is(scalar $pg->psql('SELECT count(*) FROM applications'), scalar @ids, 'no other application rows');

# --- Kafka: the events of DESIGN.md ------------------------------------------------------------
my %topics = map { $_ => OsagoStack::kafka_messages($kb, "osago.application.$_") }
             qw(created started task task-result);
my %type = (created => 'OsagoApplicationCreated', started => 'OsagoApplicationStarted',
            task => 'OsagoApplicationTask', 'task-result' => 'OsagoApplicationTaskResult');
my %want_n = (created => scalar @ids, started => scalar @ids, task => @ids * @CODES,
              'task-result' => @ids * @CODES);
for my $t (sort keys %topics) {
    my @m = @{ $topics{$t} };
    my @wrong;
    for my $m (@m) {
        my $e = $m->{event};
        if (!$e) { push @wrong, "offset $m->{offset}: not JSON"; next }
        my $tid = $trace{ $e->{application_id} // '' } ? (split /-/, $trace{ $e->{application_id} })[1] : 'x';
        push @wrong, "type $e->{type}" unless ($e->{type} // '') eq $type{$t};
        push @wrong, 'version' unless ($e->{version} // 0) == 1;
        push @wrong, 'event_id' unless ($e->{event_id} // '') =~ /^[0-9a-f-]{36}$/;
        push @wrong, 'key is not the application id' unless ($m->{key} // '') eq ($e->{application_id} // '-');
        push @wrong, "application $e->{application_id} unknown" unless $trace{ $e->{application_id} // '' };
        push @wrong, 'occurred_at' unless ($e->{occurred_at} // '') =~ /^\d{4}-\d\d-\d\dT[\d:.]+Z$/;
        push @wrong, "traceparent $e->{traceparent} not of trace $tid"
            unless ($e->{traceparent} // '') =~ /^00-\Q$tid\E-[0-9a-f]{16}-[0-9a-f]{2}$/;
        push @wrong, 'header traceparent' unless ($m->{headers}{traceparent} // '') =~ /^00-\Q$tid\E-/;
        push @wrong, 'no data' unless ref $e->{data} eq 'HASH';
    }
    my %u; @wrong = grep { !$u{$_}++ } @wrong;
    is(scalar @m, $want_n{$t}, "topic $t: $want_n{$t} events") or diag scalar(@m) . ' events';
    ok(!@wrong, "  $type{$t}: envelope, key = application id, traceparent of the entry (event"
                . ' and Kafka header)') or diag join "\n", @wrong[0 .. ($#wrong > 10 ? 10 : $#wrong)];
}
my @res_bad;
for my $m (@{ $topics{'task-result'} }) {
    my $d = $m->{event}{data} || {};
    my $x = $q->{ $m->{event}{application_id} // '' }{ $d->{insurer} // '' };
    push @res_bad, $J->encode($d) unless $x && ($d->{status} // '') eq 'ok'
        && abs(($d->{premium_rub} // -1) - $x->{premium}) < 0.005 && ($d->{attempt} // 0) == 1;
}
ok(!@res_bad, 'task results carry the premiums stored in PostgreSQL') or diag join "\n", @res_bad;
my @started_bad = grep { join(',', sort @{ $_->{event}{data}{insurers} || [] }) ne join(',', sort @CODES) }
                  @{ $topics{started} };
ok(!@started_bad, 'Started lists every insurer of the file') or diag explain $started_bad[0];

# --- metrics match what happened -----------------------------------------------------------------
my $m1 = $w->metrics;
my $n_apps = @ids;
my $n_tasks = @ids * @CODES;
my %want = (intake_relayed => $n_apps, intake_invalid => scalar @bad, applications_started => $n_apps,
            insurer_calls => $n_tasks, insurer_ok => $n_tasks, insurer_errors => 0,
            tasks_failed => 0, tasks_retried => 0, results_applied => $n_tasks,
            applications_completed => $n_apps, publish_total => $total_pub);
for my $k (sort keys %want) {
    my $v = OsagoStack::metric_of($m1, $k);
    my $v0 = OsagoStack::metric_of($m0, $k) // 0;
    ok(defined $v && $v - $v0 == $want{$k}, "metric $k: +$want{$k}")
        or diag 'got ' . (defined $v ? $v - $v0 : 'no such metric');
}
is(OsagoStack::metric_of($m1, 'calls_in_flight'), 0, 'no insurer call in flight');
for my $k (qw(redis_up kafka_up pg_up)) {
    is(OsagoStack::metric_of($m1, $k), 1, "gauge $k 1");
}

# every produce is a confirmed batch: the relay's Created, the orchestrator's Started and Tasks,
# the executor's results; at least one batch per application for the relay and the orchestrator
for my $h (qw(kafka_confirm_ms insurer_call_ms application_ms)) {
    my $count = (OsagoStack::metric_of($m1, "${h}_count") // 0) - (OsagoStack::metric_of($m0, "${h}_count") // 0);
    my $inf = OsagoTest::prom_sum($m1, "osago_worker_${h}_bucket", le => '+Inf') // -1;
    my @le = sort { $a <=> $b } grep { $_ ne '+Inf' }
             map { /le="([^"]+)"/ ? $1 : () } grep { /^osago_worker_${h}_bucket\{/ } keys %$m1;
    my @cum = map { OsagoTest::prom_sum($m1, "osago_worker_${h}_bucket", le => $_) } @le;
    my @down = grep { $cum[$_] < $cum[$_ - 1] } 1 .. $#cum;
    if ($h eq 'application_ms') {
        is($count, $n_apps, "histogram $h counted once per application completed");
    } else {
        ok($count >= ($h eq 'insurer_call_ms' ? $n_tasks : 2), "histogram $h counted ($count)");
    }
    ok(@le >= 10 && !@down && $inf == OsagoStack::metric_of($m1, "${h}_count"),
       "histogram $h: buckets cumulative, +Inf equals the count");
}
ok(OsagoTest::prom_sum($m1, 'osago_worker_kafka_confirm_ms_bucket', le => '5000')
       == OsagoStack::metric_of($m1, 'kafka_confirm_ms_count'),
   'every batch confirmed within 5 s on an idle broker');

# the attempts again by insurer: every insurer of the file answered each application once
{
    my (@bad, $sum_by);
    for my $c (@CODES) {
        my %d = map { $_ => (OsagoStack::metric_of($m1, 'insurer_attempts', insurer => $c, outcome => $_) // -1)
                          - (OsagoStack::metric_of($m0, 'insurer_attempts', insurer => $c, outcome => $_) // 0) }
                qw(ok error timeout);
        my $n = (OsagoStack::metric_of($m1, 'insurer_attempt_ms_count', insurer => $c) // -1)
              - (OsagoStack::metric_of($m0, 'insurer_attempt_ms_count', insurer => $c) // 0);
        push @bad, "$c: ok +$d{ok}, error +$d{error}, timeout +$d{timeout}, timed +$n"
            unless $d{ok} == $n_apps && $d{error} == 0 && $d{timeout} == 0 && $n == $n_apps;
        $sum_by += OsagoStack::metric_of($m1, 'insurer_attempt_ms_sum', insurer => $c) // 0;
    }
    ok(!@bad, "by insurer: each of the " . @CODES . " insurers +$n_apps ok attempts, timed, no error")
        or diag join "\n", @bad;
    is($sum_by, OsagoStack::metric_of($m1, 'insurer_call_ms_sum'),
       '  their times add up to insurer_call_ms\' sum');
    my @labels = sort keys %{ { map { /insurer="([^"]+)"/ ? ($1 => 1) : () }
                                grep { /^osago_worker_insurer_attempt/ } keys %$m1 } };
    is("@labels", join(' ', sort @CODES), '  and only the insurers of the file are shown');
}

# each application's time is its row's, accepted (created_at) to completed (updated_at)
{
    my $in = join ',', map { "'$_'" } @ids;
    my ($sum, $slowest) = split /\|/, scalar $pg->psql(
        "SELECT sum(ms), max(ms) FROM (SELECT greatest(0, floor(extract(epoch FROM updated_at - created_at) * 1000))::bigint"
        . " AS ms FROM applications WHERE id IN ($in) AND status = 'completed') t");
    my $h_sum = (OsagoStack::metric_of($m1, 'application_ms_sum') // 0)
              - (OsagoStack::metric_of($m0, 'application_ms_sum') // 0);
    is($h_sum, $sum, 'histogram application_ms: its sum is the applications\' times in PostgreSQL');
    my ($le) = grep { $_ >= $slowest } 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000;
    is(OsagoTest::prom_sum($m1, 'osago_worker_application_ms_bucket', le => $le),
       OsagoStack::metric_of($m1, 'application_ms_count'),
       "  and every application is in the bucket of the slowest one ($slowest ms, le=$le)");
    my ($below) = grep { $_ < $slowest } reverse 100, 200, 500, 1000, 2000, 5000, 10000, 30000;
    ok(OsagoTest::prom_sum($m1, 'osago_worker_application_ms_bucket', le => $below)
       < OsagoStack::metric_of($m1, 'application_ms_count'),
       '  and not all in the bucket below it') if defined $below;
}

my $rss = OsagoTest::prom_sum($m1, 'process_resident_memory_bytes') // 0;
my $heap = OsagoStack::metric_of($m1, 'heap_in_use_bytes') // 0;
ok($heap > 1 << 20 && $heap < $rss, 'heap in use is over 1 MiB and below the resident size')
    or diag "heap in use $heap, resident $rss";
ok(defined OsagoStack::metric_of($m1, 'heap_free_bytes'), 'heap free bytes shown');

# --- a lost read model is rebuilt by a redelivered result, and reads as results built it ---------
# Results builds a changed application's document from its own transaction's rows; a duplicate
# reads the application from PostgreSQL instead. The two must write the same document.
{
    my $id = $ids[0];
    my $built = $r->cli('HGET', "osago:app:$id", 'doc') // '';
    my ($dup) = grep { ($_->{event}{application_id} // '') eq $id } @{ $topics{'task-result'} };
    $r->cli('DEL', "osago:app:$id");
    my ($code, undef, $err) = OsagoTest::kcat($kb->bootstrap, \"$dup->{payload}\n", '-P', '-t',
                                              'osago.application.task-result', '-k', $id);
    is($code, 0, 'a task result produced again (kcat)') or diag $err;
    my $back = OsagoStack::wait_until(sub { defined $r->cli('HGET', "osago:app:$id", 'doc') }, 15, 0.1);
    ok($back, '  the deleted read model is written again');
    is($r->cli('HGET', "osago:app:$id", 'doc') // '', $built,
       '  byte for byte the document results built in its transaction') if $back;
    my $m2 = $w->metrics;
    is(OsagoStack::metric_of($m2, 'results_duplicate') - (OsagoStack::metric_of($m1, 'results_duplicate') // 0), 1,
       '  counted as a duplicate');
    is(OsagoStack::metric_of($m2, 'results_applied'), OsagoStack::metric_of($m1, 'results_applied'),
       '  and applied nothing');
}

# --- logs -----------------------------------------------------------------------------------------
my @raw = grep { exists $_->{_raw} && $_->{_raw} !~ /^\s*$/ } @$logs;
ok(!@raw, 'every log line is one JSON object') or diag join "\n", map { $_->{_raw} } @raw[0 .. 5];
my @shape = grep { !exists $_->{_raw} && !(defined $_->{ts} && defined $_->{level} && defined $_->{msg}) } @$logs;
ok(!@shape, 'each with ts, level and msg') or diag explain $shape[0];
ok(!(grep { ($_->{level} // '') =~ /^(?:warn|error)$/ && ($_->{event} // '') eq 'claim_idle_short' }
     @$logs), 'the default --claim-idle-ms draws no warning');
my $tid = (split /-/, $trace{ $ids[1] })[1];
ok((grep { ($_->{trace_id} // '') eq $tid } @$logs), 'an application\'s trace id is in the log');

$sub->stop;
$mon->stop;
my @consumers = $r->cli('XINFO', 'CONSUMERS', 'osago:intake', 'osago-worker');
ok((grep { $_ eq $w->{name} } @consumers), "the relay is a consumer of the intake group ($w->{name})");
$w->stop;
@consumers = $r->cli('XINFO', 'CONSUMERS', 'osago:intake', 'osago-worker');
ok(!(grep { $_ eq $w->{name} } @consumers), '  and left it on a clean stop (it held no pending entry)')
    or diag "@consumers";
diag sprintf 'took %.1f s', time - $T0;
done_testing;
