#!/usr/bin/perl
# A dead consumer's intake entries behind a long run of entries another consumer is still
# working on. Redis looks at most ten times COUNT entries of the pending list per XAUTOCLAIM,
# and a relay tick makes 16 calls of COUNT 64: 10,240 entries. With 12,000 busy ones ahead, a
# relay that started every tick at the head of the list never reached the dead consumer's
# entries; it now goes on from where the last tick stopped and takes them over in its second.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use POSIX ();
use OsagoTest;
use OsagoStack;

OsagoStack::need_bins(qw(devbroker insurer-sim osago-worker));

my $BUSY    = 12_000;
my $IDLE_MS = 2000;
my $STREAM  = 'osago:intake';
my $GROUP   = 'osago-worker';

my $pg  = OsagoStack::Postgres->new;
my $r   = OsagoTest::Redis->new;
my $kb  = OsagoStack::Devbroker->new;
my $sim = OsagoStack::InsurerSim->new(insurers => [qw(alfa)], latency => '10-20');
my ($mc, $mo, $me) = OsagoStack::Worker->migrate($pg);
is($mc, 0, 'migrate') or diag "$mo$me";

# the busy entries first, then three applications; all read by a consumer that dies
is($r->cli('EVAL', "for i = 1, tonumber(ARGV[1]) do redis.call('XADD', KEYS[1], '*', 'busy', i) end"
           . " return redis.call('XLEN', KEYS[1])", 1, $STREAM, $BUSY), $BUSY,
   "$BUSY entries in the stream");
my @ids = OsagoStack::intake_entries($r, 3);
is($r->cli('XGROUP', 'CREATE', $STREAM, $GROUP, '0'), 'OK', 'the group');
is($r->cli('EVAL', "local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], 'dead', 'COUNT', 100000,"
           . " 'STREAMS', KEYS[1], '>') return #r[1][2]", 1, $STREAM, $GROUP), $BUSY + 3,
   '  all read by consumer "dead"');

# The busy ones pass to consumer "live", which keeps them from going idle (XCLAIM resets an
# entry's idle time) for as long as the test runs.
my $keep_busy = <<'LUA';
local ids = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', ARGV[2])
local args = { KEYS[1], ARGV[1], 'live', 0 }
for _, e in ipairs(ids) do
    args[#args + 1] = e[1]
    if #args == 1004 or _ == #ids then
        args[#args + 1] = 'JUSTID'
        redis.call('XCLAIM', unpack(args))
        args = { KEYS[1], ARGV[1], 'live', 0 }
    end
end
return #ids
LUA
is($r->cli('EVAL', $keep_busy, 1, $STREAM, $GROUP, $BUSY), $BUSY, '  the busy ones passed to "live"');
my $parent = $$;
my $keeper = fork // die "fork: $!";
if ($keeper == 0) {    # until killed, or the test is gone; the test's objects are not its own
    while (getppid() == $parent) {
        $r->cli('EVAL', $keep_busy, 1, $STREAM, $GROUP, $BUSY);
        sleep 0.3;
    }
    POSIX::_exit(0);
}
sleep $IDLE_MS / 1000 + 0.2;    # the dead consumer's three are idle long enough to be taken

my $w = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $sim,
    name => 'deep-relay', roles => 'relay',
    args => [ OsagoStack::worker_flags(claim_idle_ms => $IDLE_MS) ]);
my $t0 = time;
my $in = sub { ($pg->psql("SELECT count(*) FROM applications WHERE id IN ("
                          . join(',', map { "'$_'" } @ids) . ")"))[0] // 0 };
ok(OsagoStack::wait_until(sub { $in->() == 3 }, 12, 0.1),
   'the dead consumer\'s three applications are relayed') or diag 'relayed: ' . $in->();
my $took = time - $t0;
cmp_ok($took, '<', 3 * $IDLE_MS / 1000 + 2, sprintf('  in %.1f s (a claim tick every %.1f s)',
                                                    $took, $IDLE_MS / 2000));
is(OsagoStack::metric_of($w->metrics, 'intake_claimed'), 3, '  taken over: those three only');

kill 'KILL', $keeper;
waitpid $keeper, 0;
my %pending = %{ OsagoStack::pending_by_consumer($r) };
is($pending{live}, $BUSY, 'the busy ones are still "live"\'s') or diag explain \%pending;
ok(!$pending{dead}, '  nothing is left with "dead"');
like($w->log_text, qr/"event":"claim_idle_short"[^\n]*--claim-idle-ms $IDLE_MS /,
     'the relay warned at start that --claim-idle-ms is below its wait for Kafka');
$w->stop;

done_testing;
