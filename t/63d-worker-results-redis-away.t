#!/usr/bin/perl
# Redis away for longer than the stale age while insurer answers come in: the results role goes
# on applying them to PostgreSQL (a quote stays running until its result is applied, so results
# waiting on Redis would have the sweeper take the quotes for abandoned and call the insurers
# again), owes their read models, and writes them once Redis is back, storing its offsets only
# then. Each insurer is called once; every application ends completed in PostgreSQL and in Redis.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use OsagoTest;
use OsagoStack;

OsagoStack::need_bins(qw(devbroker insurer-sim osago-worker));

my $T0 = time;
my @CODES = qw(alfa ingos reso);
my $N = 10;
my $STALE = 3;
my $pg  = OsagoStack::Postgres->new;
# AOF: the read models written before the outage survive it, as in production
my $r   = OsagoTest::Redis->new(args => [ '--appendonly', 'yes', '--appendfsync', 'always' ]);
my $kb  = OsagoStack::Devbroker->new;
my $sim = OsagoStack::InsurerSim->new(insurers => \@CODES, latency => '1500-1500');
my $w = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $sim,
                                migrate => 1, name => 'redis-away', wait => 'readyz',
                                args => [ OsagoStack::worker_flags(
                                    heartbeat_s => 1, stale_after_s => $STALE,
                                    sweep_interval_s => 1, kafka_session_timeout_ms => 6000) ]);
my $calls = sub { OsagoStack::metric_of($w->metrics, $_[0] // 'insurer_calls') // 0 };

# one application through every role first: the consumer groups' first join takes seconds
my @warm = (scalar OsagoStack::intake_entry($r));
ok(OsagoStack::wait_completed($pg, \@warm, 60), 'warm-up application completed');

my @ids = map { scalar OsagoStack::intake_entry($r) } 1 .. $N;
my $all = ($N + 1) * @CODES;
ok(OsagoStack::wait_until(sub { $calls->() >= $all }, 30, 0.05),
   "all $N applications' insurer calls under way");
$r->stop;
my $t_down = time;

my $in = join ',', map { "'$_'" } @ids;
ok(OsagoStack::wait_until(sub {
       ($pg->psql("SELECT count(*) FROM applications WHERE id IN ($in) AND status = 'completed'"))[0]
       == $N }, 10, 0.1),
   'with Redis away, every application completed in PostgreSQL');
my $rest = $STALE + 2.5 - (time - $t_down);
sleep $rest if $rest > 0;
is(OsagoStack::metric_of($w->metrics, 'tasks_swept'), 0, 'the sweeper took no quote for abandoned');
is($calls->(), $all, "$all insurer calls: each once");

$r->start;
ok(OsagoStack::wait_until(sub {
       my $doc = $r->cli('HGET', "osago:app:$ids[-1]", 'doc') // '';
       $doc =~ /"status":"completed"/ }, 15, 0.1),
   'Redis back: the owed read models are written');
OsagoStack::check_all_done($pg, $r, [ @warm, @ids ], \@CODES);
my @lines = @{ $w->log_lines };
ok((grep { ($_->{event} // '') eq 'read_model_owed' } @lines), 'results said it owes read models');
ok((grep { ($_->{event} // '') eq 'read_model_settled' } @lines), '  and when it wrote them');
ok($w->running, 'the worker runs on');

$w->stop;
is($w->sanitizer_report, undef, 'no sanitizer report');
diag sprintf 'took %.1f s', time - $T0;
done_testing;
