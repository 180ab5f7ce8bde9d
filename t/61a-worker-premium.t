#!/usr/bin/perl
# Premiums at the edges of what quotes.premium_rub (numeric(12, 2)) holds. The executor judges
# an answer's premium as it will be stored, rounded to kopecks: 9999999999.99 is the largest
# one, 9999999999.999 rounds past it and 0.004 rounds to nothing. Those two are malformed
# answers (an error after 3 attempts, the reason stored); none may reach PostgreSQL as a
# result it refuses, which would leave the quote running and be redelivered for ever.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use JSON::PP ();
use OsagoTest;
use OsagoStack;

OsagoStack::need_bins(qw(devbroker insurer-sim osago-worker));

my $J = JSON::PP->new->utf8->canonical;
my $pg  = OsagoStack::Postgres->new;
my $r   = OsagoTest::Redis->new;
my $kb  = OsagoStack::Devbroker->new;
my $sim = OsagoStack::InsurerSim->new(insurers => ['alfa'], latency => '10-20');
my %fake = (
    maxprem => '9999999999.99',
    roundup => '9999999999.999',
    tiny    => '0.004',
    cent    => '0.005',
);
my %rec = map { $_ => OsagoStack::FakeInsurer->new(code => $_, mode => 'ok',
                                                    premium_text => $fake{$_}) } sort keys %fake;
my $file = $sim->write_insurers("$sim->{dir}/insurers.premium.json",
                                add => [ map { $rec{$_}->entry } sort keys %rec ]);
my @CODES = map { $_->{code} } @{ $J->decode(OsagoTest::_slurp($file)) };

# a lifetime for the read models other than the default, which the entries below start with
my $TTL_S = 86400;
my $w = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $file,
                                migrate => 1, name => 'premium-1',
                                args => [ OsagoStack::worker_flags(app_ttl_s => $TTL_S) ]);
my @ids = map { scalar OsagoStack::intake_entry($r) } 1 .. 2;
ok(OsagoStack::wait_completed($pg, \@ids, 60), 'both applications completed')
    or diag explain [ $pg->psql('SELECT application_id, insurer_code, status, attempt FROM quotes') ];

my $q = OsagoStack::quotes_of($pg, \@ids);
for my $id (@ids) {
    is_deeply([ @{ $q->{$id}{maxprem} }{qw(status premium attempt)} ], [ 'ok', '9999999999.99', 1 ],
              'the largest premium numeric(12, 2) holds is stored as answered');
    is_deeply([ @{ $q->{$id}{cent} }{qw(status premium attempt)} ], [ 'ok', '0.01', 1 ],
              '0.005 rounds to one kopeck');
    for my $c (qw(roundup tiny)) {
        my $x = $q->{$id}{$c} || {};
        ok(($x->{status} // '') eq 'error' && ($x->{attempt} // 0) == 3 && !defined $x->{premium}
           && ($x->{error} // '') =~ /premium_rub \Q$fake{$c}\E out of range/,
           "premium $fake{$c}: an error after 3 attempts, naming the premium")
            or diag $J->encode($x);
    }
}
is(scalar(@{ $rec{roundup}->calls }), 3 * @ids, 'each malformed premium was asked for exactly 3 times');
OsagoStack::check_all_done($pg, $r, \@ids, \@CODES);
my @ttl = map { OsagoStack::read_model($r, $_)->{ttl} } @ids;
is_deeply([ grep { !($_ > $TTL_S - 60 && $_ <= $TTL_S) } @ttl ], [],
          "the read models the worker rewrote live --app-ttl-s ($TTL_S s), not the edge's 7 days")
    or diag "TTLs: @ttl";
my $pg_errors = grep { ($_->{event} // '') eq 'pg_error' } @{ $w->log_lines };
is($pg_errors, 0, 'no statement failed in PostgreSQL');
$w->stop;
$rec{$_}->stop for keys %rec;
done_testing;
