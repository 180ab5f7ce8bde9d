#!/usr/bin/perl
# Results keeps a copy of the quotes of each application in progress, versioned by the
# application row (its xmin), so that each result need not read every quote of its application
# again (worker/quote_cache.h). Only a results role runs; the task results are produced by hand.
#  - the first result of an application reads its quotes; the next ones are decided from the copy;
#  - a document built from the copy reads byte for byte as one built from a SELECT (the premium
#    as the column stores it: 8734.5 becomes 8734.50);
#  - a change by another writer (another worker's results; a hand edit, through migration 004's
#    triggers) makes results read the quotes again, and count what it finds;
#  - data PostgreSQL refuses on the copy's one round trip skips that result alone; a batch with
#    a copy and a read completes both applications;
#  - the triggers pass the worker's own sessions by (osago.writer), and fire for anything else
#    that changes what the copy holds, not for what it does not hold;
#  - a new PostgreSQL connection forgets the copy (its versions are the server's xids).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use JSON::PP;
use Time::HiRes qw(time);
use OsagoTest;
use OsagoStack;

OsagoStack::need_bins(qw(devbroker insurer-sim osago-worker));

my $T0 = time;
my $J = JSON::PP->new->canonical;
my @CODES = qw(alfa ingos reso vsk);
# track_functions: the triggers' calls are counted in pg_stat_user_functions
my $pg  = OsagoStack::Postgres->new(settings => [ '-c track_functions=pl' ]);
my $r   = OsagoTest::Redis->new;
my $kb  = OsagoStack::Devbroker->new;
my $sim = OsagoStack::InsurerSim->new(insurers => \@CODES);
my $w = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $sim,
                                migrate => 1, name => 'results-copy', roles => 'results',
                                args => [ OsagoStack::worker_flags(kafka_session_timeout_ms => 6000) ]);

# An application as the orchestrator and executors leave it: in progress, each quote running;
# written as the worker writes (osago.writer), so that migration 004's triggers pass it by.
my $application = sub {
    my @codes = @_;
    my $id = OsagoStack::uuid7();
    my $quotes = join ',', map { "('$id', '$_', 'running', 1)" } @codes;
    $pg->psql("SET osago.writer = 'worker'; INSERT INTO applications (id, partner, payload, status)"
              . " VALUES ('$id', 'partner-a', '{}', 'in_progress');"
              . " INSERT INTO quotes (application_id, insurer_code, status, attempt) VALUES $quotes");
    return $id;
};
my $result = sub {
    my ($id, $code, %d) = @_;
    my $ev = { type => 'OsagoApplicationTaskResult', version => 1,
               event_id => OsagoStack::uuid7(), application_id => $id,
               occurred_at => '2026-12-08T00:00:00.000Z',
               traceparent => OsagoStack::traceparent(),
               data => { insurer => $code, attempt => 1, %d } };
    my $json = $J->encode($ev);
    my ($c, undef, $err) = OsagoTest::kcat($kb->bootstrap, \"$json\n", '-P', '-t',
                                           'osago.application.task-result', '-k', $id);
    is($c, 0, "a result for $code produced (kcat)") or diag $err;
};
my $doc = sub { my $d = $r->cli('HGET', "osago:app:$_[0]", 'doc'); $d ? $J->decode($d) : undef };
my $quote_in_doc = sub {
    my ($id, $code) = @_;
    my $d = $doc->($id) or return undef;
    my ($q) = grep { $_->{code} eq $code } @{ $d->{insurers} || [] };
    return $q;
};
my $wait_quote = sub {
    my ($id, $code, $status, $secs) = @_;
    return OsagoStack::wait_until(sub { (($quote_in_doc->($id, $code) // {})->{status} // '')
                                        eq $status }, $secs // 15, 0.05);
};
my $count = sub { OsagoStack::metric_of($w->metrics, "results_cache_$_[0]") // 0 };
my $app_status = sub { scalar $pg->psql("SELECT status FROM applications WHERE id = '$_[0]'") };

# --- the first result reads, the next ones use the copy -------------------------------------------
my $a1 = $application->(@CODES);
$result->($a1, 'alfa', status => 'ok', premium_rub => '8734.5');
ok($wait_quote->($a1, 'alfa', 'ok', 40), 'the first result is applied (the group joined)');
is($count->('misses'), 1, '  its application\'s quotes were read');
is($count->('hits'), 0, '  no copy used yet');

# what an executor's hand-back does to another quote meanwhile: nothing the copy holds
$pg->psql("SET osago.writer = 'worker'; UPDATE quotes SET status = 'pending', attempt = 2"
          . " WHERE application_id = '$a1' AND insurer_code = 'vsk'");
$result->($a1, 'ingos', status => 'ok', premium_rub => '9100');
ok($wait_quote->($a1, 'ingos', 'ok'), 'the second result is applied');
is($count->('hits'), 1, '  decided from the copy (a quote handed back meanwhile)');
is($count->('misses'), 1, '  nothing read again');
like($r->cli('HGET', "osago:app:$a1", 'doc') // '', qr/"code":"alfa"[^}]*"premium_rub":8734\.50,/,
     '  the copy holds the premium as the column stores it');
is($app_status->($a1), 'in_progress', '  two of four: still in progress');

# the same document from a SELECT: delete it, and a duplicate result writes it again that way
{
    my $built = $r->cli('HGET', "osago:app:$a1", 'doc') // '';
    $r->cli('DEL', "osago:app:$a1");
    $result->($a1, 'ingos', status => 'ok', premium_rub => '9100');
    ok(OsagoStack::wait_until(sub { defined $r->cli('HGET', "osago:app:$a1", 'doc') }, 15, 0.05),
       'a duplicate writes the deleted document again, from a SELECT');
    is($r->cli('HGET', "osago:app:$a1", 'doc') // '', $built,
       '  byte for byte the document built from the copy');
}

# --- another writer: the row's version moves, the copy is not used -----------------------------
# by hand, without a word about the application: migration 004's trigger moves its version
my $xmin = sub { scalar $pg->psql("SELECT xmin FROM applications WHERE id = '$_[0]'") };
my $v0 = $xmin->($a1);
$pg->psql("UPDATE quotes SET status = 'ok', premium_rub = 5000, attempt = 1"
          . " WHERE application_id = '$a1' AND insurer_code = 'reso'");
isnt($xmin->($a1), $v0, 'a quote made final by hand moves its application\'s version (trigger)');
my $misses = $count->('misses');
$result->($a1, 'vsk', status => 'error', error => 'HTTP 500', attempt => 2);
ok(OsagoStack::wait_until(sub { $app_status->($a1) eq 'completed' }, 15, 0.05),
   'the last result after another writer\'s change completes the application');
is($count->('misses'), $misses + 1, '  its quotes were read again');
ok(OsagoStack::wait_until(sub { (($doc->($a1) // {})->{status} // '') eq 'completed' }, 15, 0.05),
   '  the document says completed');
like($r->cli('HGET', "osago:app:$a1", 'doc') // '',
     qr/"code":"reso"[^}]*"status":"ok","premium_rub":5000\.00,/,
     '  with the other writer\'s quote in it');
is(($quote_in_doc->($a1, 'vsk') // {})->{error}, 'HTTP 500', '  and the error');

# --- the copy completes an application in one round trip ----------------------------------------
my $a2 = $application->(qw(alfa ingos));
$result->($a2, 'alfa', status => 'ok', premium_rub => '7000');
ok($wait_quote->($a2, 'alfa', 'ok'), 'another application: first result applied');
my $hits = $count->('hits');
$result->($a2, 'ingos', status => 'ok', premium_rub => '7100.25');
ok(OsagoStack::wait_until(sub { (($doc->($a2) // {})->{status} // '') eq 'completed' }, 15, 0.05),
   '  the second completes it, in the document');
is($app_status->($a2), 'completed', '  and in PostgreSQL');
is($count->('hits'), $hits + 1, '  decided from the copy');
is(scalar $pg->psql("SELECT premium_rub FROM quotes WHERE application_id = '$a2'"
                    . " AND insurer_code = 'ingos'"), '7100.25', '  the premium stored');

# --- data PostgreSQL refuses, on the copy's one round trip: that result alone is skipped ----------
# The event decoder lets no premium through that numeric(12,2) cannot hold, so a trigger of the
# test's own refuses one (SQLSTATE 22003, a data exception): the quotes' update fails with the
# applications' update and the COMMIT in the same round trip, and the batch is then applied one
# result at a time.
$pg->psql(q{CREATE FUNCTION test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN}
          . q{ IF NEW.premium_rub = 4242 THEN RAISE EXCEPTION USING ERRCODE = '22003',}
          . q{ MESSAGE = 'refused by the test'; END IF; RETURN NEW; END $$;}
          . q{ CREATE TRIGGER test_refuse BEFORE UPDATE ON quotes FOR EACH ROW}
          . q{ EXECUTE FUNCTION test_refuse()});
my $a5 = $application->(qw(alfa ingos));
$result->($a5, 'alfa', status => 'ok', premium_rub => '5100');
ok($wait_quote->($a5, 'alfa', 'ok'), 'a fifth application: first result applied');
$hits = $count->('hits');
$result->($a5, 'ingos', status => 'ok', premium_rub => '4242');
ok(OsagoStack::wait_until(sub {
       grep { ($_->{event} // '') eq 'event_invalid' && ($_->{msg} // '') =~ /\Q$a5\E\/ingos/ }
       @{ $w->log_lines } }, 15, 0.05),
   '  a premium PostgreSQL refuses: that result is skipped, and the reason logged');
$pg->psql('DROP TRIGGER test_refuse ON quotes; DROP FUNCTION test_refuse()');
$result->($a5, 'ingos', status => 'ok', premium_rub => '5200');
ok(OsagoStack::wait_until(sub { (($doc->($a5) // {})->{status} // '') eq 'completed' }, 15, 0.05),
   '  the next result for the quote completes the application');
is(scalar $pg->psql("SELECT premium_rub FROM quotes WHERE application_id = '$a5'"
                    . " AND insurer_code = 'ingos'"), '5200.00', '  with its premium');
cmp_ok($count->('hits'), '>', $hits, '  decided from the copy');

# --- a copy and a read in one batch (one kcat call: most often one poll) --------------------------
my ($a6, $a7) = ($application->(qw(alfa ingos)), $application->(qw(alfa ingos)));
$result->($a6, 'alfa', status => 'ok', premium_rub => '6100');
ok($wait_quote->($a6, 'alfa', 'ok'), 'a sixth application: first result applied');
{
    my @evs = map { $J->encode({ type => 'OsagoApplicationTaskResult', version => 1,
                                 event_id => OsagoStack::uuid7(), application_id => $_->[0],
                                 occurred_at => '2026-12-08T00:00:00.000Z',
                                 traceparent => OsagoStack::traceparent(),
                                 data => { insurer => $_->[1], attempt => 1, status => 'ok',
                                           premium_rub => $_->[2] } }) }
              [ $a6, 'ingos', '6200' ], [ $a7, 'alfa', '7100' ], [ $a7, 'ingos', '7200' ];
    my ($c, undef, $err) = OsagoTest::kcat($kb->bootstrap, \(join("\n", @evs) . "\n"), '-P', '-t',
                                           'osago.application.task-result');
    is($c, 0, 'three results for two applications produced together (kcat)') or diag $err;
}
ok(OsagoStack::wait_until(sub { (($doc->($a6) // {})->{status} // '') eq 'completed'
                                && (($doc->($a7) // {})->{status} // '') eq 'completed' }, 15, 0.05),
   '  both applications completed, in their documents');
is(scalar $pg->psql("SELECT string_agg(insurer_code || '=' || premium_rub, ','"
                    . " ORDER BY application_id <> '$a6', insurer_code)"
                    . " FROM quotes WHERE application_id IN ('$a6', '$a7')"),
   'alfa=6100.00,ingos=6200.00,alfa=7100.00,ingos=7200.00', '  each quote with its premium');

# --- a new connection forgets the copy ------------------------------------------------------------
my $a3 = $application->(qw(alfa ingos));
$result->($a3, 'alfa', status => 'ok', premium_rub => '6500');
ok($wait_quote->($a3, 'alfa', 'ok'), 'a third application: first result applied');
$pg->restart;
$misses = $count->('misses');
$hits = $count->('hits');
$result->($a3, 'ingos', status => 'ok', premium_rub => '6600');
ok(OsagoStack::wait_until(sub { ($app_status->($a3) // '') eq 'completed' }, 30, 0.1),
   'PostgreSQL restarted: the next result completes the application');
is($count->('misses'), $misses + 1, '  its quotes read again on the new connection');
is($count->('hits'), $hits, '  the copy not used');

is(scalar $pg->psql("SELECT count(*) FROM quotes WHERE status NOT IN ('ok', 'error')"), 0,
   'every quote ended ok or error');
ok($w->running, 'the worker runs on');
$w->stop;
is($w->sanitizer_report, undef, 'no sanitizer report');

# --- the triggers: what they fire for ----------------------------------------------------------
# Counted once every session that could have fired them has ended (the worker's above): one for
# the hand edit, none for the worker's results, whose sessions say osago.writer = worker.
my $fired = sub {
    scalar $pg->psql("SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions"
                     . " WHERE funcname = 'quotes_touch_application'") };
is($fired->(), 1, 'the trigger fired for the hand edit only, not for the worker\'s results');
my $a4 = $application->(qw(alfa ingos));
my $touched = sub {
    my ($sql, $what, $want) = @_;
    my $before = $xmin->($a4);
    $pg->psql($sql);
    is($xmin->($a4) ne $before ? 1 : 0, $want ? 1 : 0,
       ($want ? '' : 'not ') . "touched by $what");
};
$touched->("UPDATE quotes SET status = 'pending', heartbeat_at = now() WHERE application_id = '$a4'",
           'running made pending (not what the copy holds)', 0);
$touched->("UPDATE quotes SET error = 'by hand' WHERE application_id = '$a4' AND insurer_code = 'alfa'",
           'an error text', 1);
$touched->("UPDATE quotes SET status = 'error' WHERE application_id = '$a4' AND insurer_code = 'alfa'",
           'a quote made final', 1);
$touched->("UPDATE quotes SET status = 'ok', premium_rub = 10, error = NULL"
           . " WHERE application_id = '$a4' AND insurer_code = 'alfa'", 'error made ok', 1);
$touched->("INSERT INTO quotes (application_id, insurer_code) VALUES ('$a4', 'reso')",
           'a quote added', 1);
$touched->("DELETE FROM quotes WHERE application_id = '$a4' AND insurer_code = 'reso'",
           'a quote removed', 1);
$touched->("SET osago.writer = 'worker'; UPDATE quotes SET status = 'error'"
           . " WHERE application_id = '$a4' AND insurer_code = 'ingos'",
           'a session that says it is the worker', 0);
diag sprintf 'took %.1f s', time - $T0;
done_testing;
