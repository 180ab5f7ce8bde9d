#!/usr/bin/perl
# An application whose read-model key holds something else than a hash (osago:app:{id} set by
# hand, another program's key): Redis refuses every write of it (WRONGTYPE), and always will.
# That application is still completed in PostgreSQL, the refusal is logged with its reason,
# and the results behind it are not held: their read models are written and published as
# usual. (Before, the refused write was owed and retried for ever: no offset of the results
# role was stored again, and its memory grew with every result until it stopped consuming.)
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use OsagoTest;
use OsagoIntake;
use OsagoStack;

OsagoStack::need_bins(qw(devbroker insurer-sim osago-worker));

my @CODES = qw(alfa ingos);
my $pg  = OsagoStack::Postgres->new;
my $r   = OsagoTest::Redis->new;
my $kb  = OsagoStack::Devbroker->new;
my $sim = OsagoStack::InsurerSim->new(insurers => \@CODES, latency => '20-50');
my $w = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $sim,
                                migrate => 1, name => 'rm-refused');

my $warm = OsagoStack::intake_entry($r);
ok(OsagoStack::wait_completed($pg, [$warm], 60), 'warm-up application completed');

my $bad = OsagoStack::uuid7();
is(OsagoIntake::resp($r, 'SET', "osago:app:$bad", 'not a hash'), 'OK',
   'the read-model key of the next application holds a string');
OsagoStack::raw_entry($r, app_id => $bad, partner => 'acme',
                      payload => OsagoStack::canonical_payload(), trace => OsagoStack::traceparent());
my @after = map { scalar OsagoStack::intake_entry($r) } 1 .. 3;

ok(OsagoStack::wait_completed($pg, [ $bad, @after ], 30),
   'it and the three after it complete in PostgreSQL');
my @late;
ok(OsagoStack::wait_until(sub {
       @late = grep { ((OsagoStack::read_model($r, $_)->{doc} || {})->{status} // '') ne 'completed' }
                    @after;
       !@late }, 20, 0.1),
   'the read models of the three after it are written: nothing is held behind the refusal')
    or diag "not completed in Redis: @late";
sleep 1.5;    # results tries what it owes once a second
ok(!(grep { ($_->{event} // '') eq 'read_model_owed' } @{ $w->log_lines }),
   '  and none is owed: the offsets of those results can be stored (owed, they were held in memory)');
is(OsagoIntake::resp($r, 'GET', "osago:app:$bad"), 'not a hash', 'the odd key is left as it was');
my ($refused) = grep { ($_->{event} // '') eq 'read_model_refused' } @{ $w->log_lines };
like($refused->{msg} // '', qr/^read model of \Q$bad\E not written: osago:app:\Q$bad\E is not a hash \(.*WRONGTYPE/,
     'the refusal is logged, with the application and the reason');

# Not about the read model, but this worker is idle here: every one of its PostgreSQL
# connections has its keepalive timer running (timer 2 in /proc/net/tcp, due within the 30 s
# idle time), so a partition is found while a statement's answer is awaited.
my %inode = map { (readlink($_) // '') =~ /^socket:\[(\d+)\]$/ ? ($1 => 1) : () }
            glob('/proc/' . $w->pid . '/fd/*');
my (@pg_socks, @no_keepalive);
for (split /\n/, OsagoTest::_slurp('/proc/net/tcp')) {
    my @f = split ' ';
    next unless @f > 9 && $inode{ $f[9] } && $f[3] eq '01';    # the worker's, established
    next unless hex((split /:/, $f[2])[1]) == $pg->port;
    push @pg_socks, $f[9];
    my ($timer, $when) = split /:/, $f[5];
    push @no_keepalive, "$f[9] timer $f[5]" unless $timer eq '02' && hex($when) <= 30 * 100;
}
cmp_ok(scalar @pg_socks, '>=', 4, scalar(@pg_socks) . ' PostgreSQL connections of the worker');
ok(!@no_keepalive, '  each with keepalives on') or diag "@no_keepalive";

is(scalar $pg->psql("SELECT count(*) FROM quotes WHERE application_id = '$bad' AND status = 'ok'"),
   scalar @CODES, 'its quotes are in PostgreSQL all the same');

# the rest, as every test: nothing lost, nothing duplicated (the odd one is set aside)
$pg->psql("DELETE FROM quotes WHERE application_id = '$bad';"
          . " DELETE FROM applications WHERE id = '$bad'");
OsagoStack::check_all_done($pg, $r, [ $warm, @after ], \@CODES);
$w->stop;

done_testing;
