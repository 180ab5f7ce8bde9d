#!/usr/bin/perl
# `osago-worker migrate` against other sessions' locks. A file waits at most
# --migrate-lock-timeout-ms for each lock: a DDL statement queued behind a long transaction holds
# every later query on its table queued behind itself, and with the limit those queries wait for
# one try of the file at most. A file given up on for a lock, or chosen as a deadlock's victim,
# has changed nothing and is tried again, up to --migrate-attempts times; after the last it is
# not recorded, and migrate exits 1 saying why. With the limit at 0 a file waits as long as it
# takes, as before.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use File::Temp ();
use IO::Handle ();
use POSIX ();
use Time::HiRes qw(time sleep);
use OsagoTest;
use OsagoStack;

OsagoStack::need_bins(qw(osago-worker));

my $pg = OsagoStack::Postgres->new;
# the migration files and outputs, removed at the end
my $tmp = File::Temp::tempdir('osago-migrate-locks-XXXXXX', TMPDIR => 1, CLEANUP => 1);

# a directory holding one migration file
sub migrations {
    my ($name, $sql) = @_;
    my $dir = "$tmp/$name";
    mkdir $dir or die "mkdir $dir: $!";
    OsagoTest::_spew("$dir/$name.sql", $sql);
    return $dir;
}

sub recorded {
    my ($version) = @_;
    return scalar $pg->psql("SELECT count(*) FROM schema_migrations WHERE version = $version");
}

sub has_column {
    my ($table, $column) = @_;
    return scalar $pg->psql("SELECT count(*) FROM information_schema.columns"
                            . " WHERE table_name = '$table' AND column_name = '$column'");
}

# migrate started beside the test: (pid, its output file)
my $runs = 0;
sub migrate_in_background {
    my (%o) = @_;
    my $out = "$tmp/migrate-" . ++$runs . '.out';
    my ($pid) = OsagoStack::_spawn(cmd => [ OsagoStack::Worker->migrate_cmd($pg, %o) ],
                                   stdout => $out, stderr => $out,
                                   env => OsagoStack::Worker::_env());
    return ($pid, $out);
}

# its exit code once it ends (undef if it did not within $secs)
sub exit_code {
    my ($pid, $secs) = @_;
    my $code;
    OsagoTest::wait_for(sub {
        return 0 unless waitpid($pid, POSIX::WNOHANG()) == $pid;
        $code = $? & 127 ? 128 + ($? & 127) : $? >> 8;
        return 1;
    }, $secs, 0.05) or do { kill 'KILL', $pid; waitpid($pid, 0) };
    return $code;
}

sub locks_on {
    my ($table, $granted) = @_;
    return scalar $pg->psql("SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
                            . " WHERE c.relname = '$table' AND l.mode = 'AccessExclusiveLock'"
                            . " AND " . ($granted ? '' : 'NOT ') . 'l.granted', quiet => 1);
}

my @holders;

# a new table that another transaction holds for $secs, and a migration that alters it
sub table_held {
    my ($table, $version, $secs) = @_;
    $pg->psql("CREATE TABLE $table (x int)");
    my $dir = migrations("${version}_$table", "ALTER TABLE $table ADD COLUMN y int;\n");
    my $holder = $pg->hold_lock('true', $secs, $table);
    ok($holder, "another transaction holds $table for $secs s") or die 'no lock holder';
    push @holders, $holder;
    return $dir;
}

# migrate, to its end: (exit code, its output, seconds taken)
sub migrate_timed {
    my $t0 = time;
    my ($code, $out, $err) = OsagoStack::Worker->migrate($pg, @_);
    return ($code, "$out$err", time - $t0);
}

# --- a lock held for a while: the file is tried again, and the table's readers are not held ------
{
    my $hold_s = 6;
    my $dir = table_held('t_a', 900, $hold_s);
    my $t0 = time;
    my ($pid, $out) = migrate_in_background(migrations => $dir,
        args => [ '--migrate-lock-timeout-ms', 300, '--migrate-attempts', 10 ]);
    # readers of t_a, while migrate waits for it: queued behind a DDL statement that waits
    # without a limit, each would be held until the other transaction ends
    my $slowest = 0;
    my $probes = 0;
    while (time - $t0 < $hold_s - 0.5) {
        my $p0 = time;
        defined $pg->psql('SELECT count(*) FROM t_a') or last;
        $probes++;
        $slowest = time - $p0 if time - $p0 > $slowest;
        sleep 0.2;
    }
    my $code = exit_code($pid, 60);
    my $log = OsagoTest::_slurp($out);
    is($code, 0, 'migrate: exit 0 once the lock is gone') or diag $log;
    cmp_ok($probes, '>=', 5, "$probes reads of t_a while migrate was at it");
    cmp_ok($slowest, '<', 2.5, sprintf('none of them waited long (the slowest %.2f s; the lock'
                                       . ' was held %d s)', $slowest, $hold_s));
    my @waits = $log =~ /"event":"migrate_lock_wait"[^\n]*/g;
    cmp_ok(scalar @waits, '>=', 2, scalar(@waits) . ' tries given up on for the lock, each logged')
        or diag $log;
    like($waits[0] // '', qr/\Q900_t_a.sql: canceling statement due to lock timeout (SQLSTATE 55P03); attempt 1 of 10, again in 1000 ms\E/, '  with the reason, the attempt and the pause');
    like($waits[1] // '', qr/attempt 2 of 10, again in 2000 ms/, '  the pause doubling');
    is(has_column('t_a', 'y'), 1, 'the file is applied');
    is(recorded(900), 1, '  and recorded once');
}

# --- held past the last attempt: not applied, not recorded, and said so -----------------------------
{
    my $dir = table_held('t_b', 901, 15);
    my ($code, $out, $took) = migrate_timed(migrations => $dir,
        args => [ '--migrate-lock-timeout-ms', 200, '--migrate-attempts', 2 ]);
    is($code, 1, 'migrate: exit 1 after its last attempt') or diag $out;
    cmp_ok($took, '<', 10, sprintf('  in %.1f s, while the lock was still held', $took));
    like($out, qr/"event":"migrate_failed"[^\n]*\Q901_t_b.sql: not applied: canceling statement due to lock timeout (SQLSTATE 55P03), 2 time(s) (another transaction holds a table it changes\E/,
         '  saying why and how often') or diag $out;
    is(has_column('t_b', 'y'), 0, 'nothing of the file applied');
    is(recorded(901), 0, '  nor recorded');
    $pg->psql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE wait_event = 'PgSleep'",
              user => 'postgres');
}

# --- a deadlock: the file is its victim, and is tried again --------------------------------------
{
    $pg->psql('CREATE TABLE t_c1 (x int)');
    $pg->psql('CREATE TABLE t_c2 (x int)');
    my $dir = migrations('902_c', "LOCK TABLE t_c1 IN ACCESS EXCLUSIVE MODE;\n"
                                  . "LOCK TABLE t_c2 IN ACCESS EXCLUSIVE MODE;\n"
                                  . "ALTER TABLE t_c1 ADD COLUMN z int;\n");
    # PostgreSQL checks a wait for a cycle once, deadlock_timeout after the wait began, and the
    # session that finds one is cancelled: migrate's check (10 s into its wait) must come after
    # the other session's request and before that session's own check (120 s)
    $pg->psql("ALTER ROLE osago SET deadlock_timeout = '10s'", user => 'postgres');
    my $sout = "$tmp/deadlock-holder.out";
    open(my $s, '|-', 'sh', '-c', 'exec psql -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$1"'
                                  . ' -U postgres -d osago >"$2" 2>&1', 'psql', $pg->port, $sout)
        or die "psql: $!";
    $s->autoflush(1);
    print {$s} "BEGIN;\nSET LOCAL deadlock_timeout = '120s';\n"
               . "LOCK TABLE t_c2 IN ACCESS EXCLUSIVE MODE;\n";
    ok(OsagoStack::wait_until(sub { locks_on('t_c2', 1) == 1 }, 10, 0.02),
       'another transaction holds t_c2');
    # no limit on its lock waits: a deadlock is tried again all the same
    my ($pid, $out) = migrate_in_background(migrations => $dir,
                                            args => [ '--migrate-lock-timeout-ms', 0 ]);
    ok(OsagoStack::wait_until(sub { locks_on('t_c2', 0) == 1 }, 20, 0.02),
       'migrate holds t_c1 and waits for t_c2');
    print {$s} "LOCK TABLE t_c1 IN ACCESS EXCLUSIVE MODE;\nCOMMIT;\n";
    my $code = exit_code($pid, 90);
    close $s;
    my $log = OsagoTest::_slurp($out);
    is($code, 0, 'migrate: exit 0 (the deadlock cost it one attempt)') or diag $log;
    like($log, qr/"event":"migrate_lock_wait"[^\n]*\Q902_c.sql: deadlock detected (SQLSTATE 40P01); attempt 1 of 30\E/, '  the deadlock logged as such') or diag $log;
    is(OsagoTest::_slurp($sout), '', 'the other transaction went through (no error)');
    is(has_column('t_c1', 'z'), 1, 'the file is applied');
    is(recorded(902), 1, '  and recorded once');
    $pg->psql('ALTER ROLE osago RESET deadlock_timeout', user => 'postgres');
}

# --- no limit: the file waits, as it did before the limit, whatever the role's own setting says --
{
    $pg->psql("ALTER ROLE osago SET lock_timeout = '100ms'", user => 'postgres');
    my $dir = table_held('t_d', 903, 2);
    my ($code, $out, $took) = migrate_timed(migrations => $dir,
        args => [ '--migrate-lock-timeout-ms', 0 ]);
    is($code, 0, '--migrate-lock-timeout-ms 0: exit 0') or diag $out;
    unlike($out, qr/migrate_lock_wait/, '  with no try given up on');
    cmp_ok($took, '>=', 1, sprintf('  having waited for the lock (%.1f s)', $took));
    is(recorded(903), 1, '  and the file recorded');
    $pg->psql('ALTER ROLE osago RESET lock_timeout', user => 'postgres');
}

waitpid($_, 0) for @holders;
done_testing();
