#!/usr/bin/perl
# A partner flooding at 250 RPS gets B + R*D requests; a well-behaved partner next to it is not
# hurt (all 2xx, latency close to a solo run).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use POSIX ();
use Time::HiRes qw(time sleep);
use OsagoTest;

my $r = OsagoTest::Redis->new;
my $n = OsagoTest::Nginx->new(redis => $r, workers => 2, http => <<'HTTP');
    osago_redis_server %%REDIS%%;
    server {
        listen 127.0.0.1:%%PORT%%;
        location / {
            osago_limit on;
            empty_gif;
        }
    }
HTTP

my $flooder = OsagoTest::add_partner($r, name => 'flooder', rate => 20, burst => 40);
my $calm    = OsagoTest::add_partner($r, name => 'calm',    rate => 20, burst => 40);
my $url = $n->url('/api');

# warm up both workers' connections and caches with a third partner
my $warm = OsagoTest::add_partner($r, name => 'warm', rate => 1000, burst => 1000);
OsagoTest::http(GET => $url, headers => { 'X-API-Key' => $warm }) for 1 .. 10;

sub calm_run {
    my ($duration) = @_;
    return OsagoTest::flood(url => $url, rps => 10, duration => $duration, keep_alive => 0,
                            headers => { 'X-API-Key' => $calm });
}

# --- solo run of the calm partner ---
my $solo = calm_run(2);
my @solo_ok = grep { $_->{status} == 200 } @{ $solo->{results} };
is(scalar @solo_ok, $solo->{sent}, "solo: all $solo->{sent} calm requests 200");
my $solo_med = OsagoTest::median(map { $_->{elapsed} } @{ $solo->{results} });

# let the calm partner's bucket refill (its 20 requests over 2 s stay within the burst anyway)
sleep 0.5;

# --- flood + calm partner concurrently ---
pipe(my $rd, my $wr) or die "pipe: $!";
my $pid = fork // die "fork: $!";
if (!$pid) {
    close $rd;
    my $c = calm_run(4);
    print {$wr} join(' ', $_->{status}, $_->{elapsed}), "\n" for @{ $c->{results} };
    close $wr;
    POSIX::_exit(0);
}
close $wr;
my $f = OsagoTest::flood(url => $url, rps => 250, duration => 4,
                         headers => { 'X-API-Key' => $flooder });
my @calm = map { [split] } <$rd>;
close $rd;
waitpid($pid, 0);
is($?, 0, 'calm client exited cleanly');

my (%st, @no_retry);
for my $x (@{ $f->{results} }) {
    $st{ $x->{status} }++;
    if ($x->{status} == 429) {
        my $ra = $x->{headers}{'retry-after'};
        push @no_retry, $x unless defined $ra && $ra =~ /^\d+$/ && $ra >= 1;
    }
}
my $D        = $f->{elapsed};
my $admitted = $st{200} // 0;
my $expected = 40 + 20 * $D;
diag(sprintf 'flood: %d sent in %.2f s (%.0f RPS), %d admitted, %d limited, expected %.1f',
             $f->{sent}, $D, $f->{rps}, $admitted, $st{429} // 0, $expected);
cmp_ok($f->{rps}, '>', 150, 'the client really flooded (> 150 RPS)');
ok(!grep({ $_ != 200 && $_ != 429 } keys %st), 'flood: only 200 and 429')
    or diag explain \%st;
cmp_ok(abs($admitted - $expected), '<=', 0.05 * $expected,
       'flood: admitted within 5 % of burst + rate x elapsed');
ok(!@no_retry, 'every 429 carries Retry-After >= 1');

# the admitted requests after the burst are spread at about one per 1/R
my @adm_t = map { $_->{t} } grep { $_->{status} == 200 } @{ $f->{results} };
my @late  = grep { $_ > 1.0 } @adm_t;
if (@late > 10) {
    my $rate = (@late - 1) / ($late[-1] - $late[0]);
    cmp_ok(abs($rate - 20), '<=', 2, sprintf 'steady state: %.1f admitted/s (20)', $rate);
}

my @calm_bad = grep { $_->[0] !~ /^2\d\d$/ } @calm;
cmp_ok(scalar @calm, '>=', 35, 'calm partner sent its ~40 requests during the flood');
ok(!@calm_bad, 'calm partner during the flood: only 2xx')
    or diag explain [ @calm_bad[0 .. ($#calm_bad < 5 ? $#calm_bad : 5)] ];
my $conc_med = OsagoTest::median(map { $_->[1] } @calm);
diag(sprintf 'calm partner median latency: solo %.2f ms, during flood %.2f ms',
             $solo_med * 1000, $conc_med * 1000);
cmp_ok($conc_med, '<=', 5 * $solo_med + 0.005,
       'calm partner median latency within 5x (+5 ms) of its solo run');

unlike($n->error_log, qr/\[(alert|emerg|crit)\]|exited on signal/, 'no alerts in error.log')
    or diag $n->error_log;

done_testing;
