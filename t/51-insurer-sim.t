#!/usr/bin/perl
# tools/insurer-sim: OSAGO pricing (deterministic, per insurer, each factor in the right
# direction and inside its corridor), latency, fault injection at the configured rates, the
# insurer list file, and many concurrent calls held in their latency at once.
use strict;
use warnings;
use utf8;
use lib 't/lib';
use OsagoTest;
use Test::More;
use File::Spec;
use File::Temp qw(tempdir);
use IO::Select;
use IO::Socket::IP;
use JSON::PP;
use POSIX qw(:sys_wait_h strftime);
use Time::HiRes qw(time sleep);

binmode(Test::More->builder->$_, ':encoding(UTF-8)') for qw(output failure_output todo_output);

my $BIN = File::Spec->catfile(OsagoTest::build_dir(), 'san', 'insurer-sim');
die "insurer-sim not built: $BIN is missing (make build/san/insurer-sim)\n" unless -x $BIN;

my $DIR = tempdir('osago-insurer-sim-XXXXXX', TMPDIR => 1, CLEANUP => 1);
my %PIDS;
my $JSON = JSON::PP->new->utf8->canonical;
$ENV{ASAN_OPTIONS} //= 'detect_leaks=1';

sub start_sim {
    my (@args) = @_;
    my $port = OsagoTest::free_port();
    my $err  = "$DIR/sim-$port.err";
    pipe(my $r, my $w) or die "pipe: $!";
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        close $r;
        open STDOUT, '>&', $w or POSIX::_exit(127);
        open STDERR, '>', $err or POSIX::_exit(127);
        { exec $BIN, '--listen', "127.0.0.1:$port", @args };
        POSIX::_exit(127);
    }
    close $w;
    $PIDS{$pid} = 1;
    my $sim = { pid => $pid, port => $port, err => $err, out => '', rpipe => $r };
    my $sel = IO::Select->new($r);
    my $deadline = time + 15;
    while (time < $deadline && $sim->{out} !~ /\n/) {
        last unless $sel->can_read($deadline - time);
        sysread($r, $sim->{out}, 4096, length $sim->{out}) or last;
    }
    die "insurer-sim did not start:\n$sim->{out}" . OsagoTest::_slurp($err)
        unless $sim->{out} =~ /ready/;
    return $sim;
}

sub stop_sim {
    my ($sim) = @_;
    my $t0 = time;
    kill 'TERM', $sim->{pid};
    my $done = OsagoTest::wait_for(sub { waitpid($sim->{pid}, WNOHANG) == $sim->{pid} }, 10, 0.01);
    my $status = $?;
    delete $PIDS{ $sim->{pid} } if $done;
    return ($done ? $status : undef, time - $t0);
}

END {
    for my $pid (keys %PIDS) {
        kill 'KILL', $pid;
        waitpid($pid, 0);
    }
}

# The application payload of DESIGN.md plus application_id; %o overrides parts of it.
sub payload {
    my (%o) = @_;
    my $p = {
        application_id => $o{id} // 'app-0001',
        vehicle => { category => $o{category} // 'B', power_hp => $o{hp} // 150, year => 2018,
                     vin => 'XTA21099012345678' },
        owner => { region_code => $o{region} // '77', birth_date => '1985-03-01' },
        kbm_class => $o{kbm} // '3',
        period_months => $o{months} // 12,
        start_date => '2026-01-15',
    };
    if ($o{unlimited}) {
        $p->{unlimited_drivers} = JSON::PP::true;
    } else {
        $p->{drivers} = $o{drivers}
            // [ { birth_date => '1985-03-01', license_issued_date => '2005-06-01' } ];
    }
    return $JSON->encode($p);
}

sub quote {
    my ($sim, $code, $body, %h) = @_;
    return OsagoTest::http(POST => "http://127.0.0.1:$sim->{port}/insurers/$code/quote",
                           content => $body,
                           headers => { 'Content-Type' => 'application/json', %h });
}

sub premium {
    my ($sim, $code, %o) = @_;
    my $res = quote($sim, $code, payload(%o));
    my $doc = eval { $JSON->decode($res->{content}) };
    return $res->{status} == 200 && $doc ? $doc->{premium_rub} : undef;
}

# fire($port, [[path, body], ...], timeout => s): all requests at once on their own connections;
# returns [{status, body, elapsed}] in order, status undef for no answer before the timeout.
sub fire {
    my ($port, $reqs, %o) = @_;
    my $timeout = $o{timeout} // 10;
    my (@conns, %by_fd);
    my $t0 = time;
    my $sel = IO::Select->new;
    for my $i (0 .. $#$reqs) {
        my ($path, $body) = @{ $reqs->[$i] };
        my $s = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port, Proto => 'tcp')
            or die "connect: $!";
        $s->blocking(0);
        my $req = "POST $path HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
                . "Content-Type: application/json\r\nContent-Length: " . length($body)
                . "\r\n\r\n$body";
        my $c = { sock => $s, out => $req, in => '', done => 0, i => $i };
        push @conns, $c;
        $by_fd{ fileno $s } = $c;
        $sel->add($s);
    }
    my $wsel = IO::Select->new(map { $_->{sock} } @conns);
    my $deadline = $t0 + $timeout;
    while ($sel->count && time < $deadline) {
        my ($rd, $wr) = IO::Select->select($sel, $wsel->count ? $wsel : undef, undef,
                                           $deadline - time);
        for my $s (@{ $wr || [] }) {
            my $c = $by_fd{ fileno $s };
            my $n = syswrite($s, $c->{out});
            substr($c->{out}, 0, $n, '') if $n;
            $wsel->remove($s) if !length $c->{out};
        }
        for my $s (@{ $rd || [] }) {
            my $c = $by_fd{ fileno $s };
            my $n = sysread($s, $c->{in}, 65536, length $c->{in});
            next if !defined $n && $!{EAGAIN};
            if (!$n) {
                $c->{done} = 1;
                $c->{elapsed} = time - $t0;
                $sel->remove($s);
                $wsel->remove($s) if $wsel->exists($s);
            }
        }
    }
    my @out;
    for my $c (@conns) {
        close $c->{sock};
        my ($head, $body) = split /\r\n\r\n/, $c->{in}, 2;
        my ($status) = ($head // '') =~ m{^HTTP/1\.\d (\d{3})};
        push @out, { status => $status, body => $body // '', elapsed => $c->{elapsed},
                     closed => $c->{done} };
    }
    return \@out;
}

sub decodes { my ($b) = @_; my $d = eval { $JSON->decode($b) }; return $d }

my @CODES = qw(alfa ingos reso vsk rosgosstrakh);

# ===== pricing and the contract =============================================================
my $sim = start_sim('--latency-ms', 0, '--seed', 7, '--write-insurers', "$DIR/insurers.json");
like($sim->{out}, qr/^insurer-sim: ready listen=127\.0\.0\.1:$sim->{port} insurers=5$/m,
     'ready line');

my $res = OsagoTest::http(GET => "http://127.0.0.1:$sim->{port}/healthz");
is($res->{status}, 200, 'GET /healthz is 200');
is_deeply(decodes($res->{content}), { status => 'ok', insurers => 5, waiting => 0, max_waiting => 0 },
          '/healthz: the insurers, and no call waiting yet');

my $list = decodes(OsagoTest::_slurp("$DIR/insurers.json"));
ok(ref $list eq 'ARRAY', '--write-insurers wrote a JSON array');
is_deeply([ map { $_->{code} } @$list ], \@CODES, 'all five insurers, in order');
is($list->[0]{name}, "АльфаСтрахование", 'with the company name');
is($list->[0]{url}, "http://127.0.0.1:$sim->{port}/insurers/alfa/quote", 'and its quote url');
is($list->[0]{timeout_ms}, 60000, 'and timeout_ms');

my $tp = '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01';
$res = quote($sim, 'alfa', payload(id => 'app-42'), traceparent => $tp);
is($res->{status}, 200, 'quote is 200');
is($res->{headers}{traceparent}, $tp, 'traceparent echoed');
like($res->{headers}{'content-type'}, qr{^application/json}, 'JSON answer');
my $q = decodes($res->{content});
is($q->{insurer}, 'alfa', 'insurer');
is($q->{application_id}, 'app-42', 'application_id echoed');
like($res->{content}, qr/"premium_rub":\d+\.\d\d[,}]/, 'premium_rub is a number in kopecks');
like($q->{quote_id} // '', qr/^alfa-[0-9a-f]+$/, 'quote_id');
my $today = strftime('%Y-%m-%d', gmtime);
ok(($q->{valid_until} // '') =~ /^\d{4}-\d\d-\d\d$/ && $q->{valid_until} gt $today,
   'valid_until is a later date');

my %base = map { $_ => premium($sim, $_) } @CODES;
is(premium($sim, 'alfa'), $base{alfa}, 'same insurer, same payload: same premium');
my %distinct = map { $_ => 1 } values %base;
is(scalar keys %distinct, 5, 'the five insurers quote five different premiums')
    or diag(explain \%base);

# Each factor moves the price, by its coefficient ratio (everything else equal).
my @factors = (
    [ 'Moscow over a cheaper region', { region => '77' }, { region => '33' }, undef ],
    [ 'Moscow over Dagestan', { region => '77' }, { region => '05' }, undef ],
    [ 'class M over class 13', { kbm => 'M' }, { kbm => '13' }, 2.45 / 0.46 ],
    [ 'class M over class 3', { kbm => 'M' }, { kbm => 3 }, 2.45 ],
    [ '200 hp over 60 hp', { hp => 200 }, { hp => 60 }, 1.6 / 1.0 ],
    [ '12 months over 3 months', { months => 12 }, { months => 3 }, 1.0 / 0.5 ],
    [ 'unlimited drivers over one driver', { unlimited => 1 }, {}, 2.32 / 0.96 ],
    [ 'a young novice over an experienced driver',
      { drivers => [ { birth_date => '2006-05-01', license_issued_date => '2025-06-01' } ] },
      {}, 1.87 / 0.96 ],
    [ 'the worst of two drivers counts',
      { drivers => [ { birth_date => '1985-03-01', license_issued_date => '2005-06-01' },
                     { birth_date => '2006-05-01', license_issued_date => '2025-06-01' } ] },
      {}, 1.87 / 0.96 ],
);
for my $f (@factors) {
    my ($name, $hi, $lo, $ratio) = @$f;
    my ($ok, $ratio_ok, @bad) = (1, 1);
    for my $code (@CODES) {
        my ($a, $b) = (premium($sim, $code, %$hi), premium($sim, $code, %$lo));
        if (!defined $a || !defined $b || $a <= $b) {
            $ok = 0;
            push @bad, "$code: " . ($a // 'undef') . ' vs ' . ($b // 'undef');
            next;
        }
        # premiums are rounded to kopecks: allow that, relative to the smaller one
        $ratio_ok = 0, push @bad, "$code ratio " . $a / $b
            if defined $ratio && abs($a / $b - $ratio) > 0.02 / $b + 1e-6 * $ratio;
    }
    ok($ok, $name) or diag(join "\n", @bad);
    ok($ratio_ok, "$name, by the coefficient ratio") or diag(join "\n", @bad) if defined $ratio;
}

# Within corridor x coefficients: base 1646..7535 (B), KT 1.8..2.0 for Moscow, 1.0..1.3 default;
# class 3 = 1.0; a 40-year-old with 20 years = 0.96; 150 hp = 1.4; 12 months = 1.0.
for my $case ([ '77', 1.8, 2.0 ], [ '33', 1.0, 1.3 ]) {
    my ($region, $ktmin, $ktmax) = @$case;
    my ($min, $max) = (1646 * $ktmin * 0.96 * 1.4, 7535 * $ktmax * 0.96 * 1.4);
    my @out = grep { my $p = premium($sim, $_, region => $region); !($p >= $min - 0.01
                     && $p <= $max + 0.01) } @CODES;
    ok(!@out, sprintf('region %s: every premium within %.2f..%.2f', $region, $min, $max))
        or diag("@out");
}
{
    my ($min, $max) = (867 * 1.8 * 0.96 * 1.4, 1579 * 2.0 * 0.96 * 1.4);
    my @p = map { premium($sim, $_, category => 'A') } @CODES;
    ok(!(grep { !defined $_ || $_ < $min - 0.01 || $_ > $max + 0.01 } @p),
       'category A has its own, lower corridor') or diag("@p");
}

# Client mistakes.
$res = quote($sim, 'nosuch', payload());
is($res->{status}, 404, 'unknown insurer is 404');
ok(decodes($res->{content}), 'with a JSON body');
$res = quote($sim, 'alfa', '{"application_id": "x", ');
is($res->{status}, 400, 'malformed JSON is 400');
like(decodes($res->{content})->{message} // '', qr/JSON/, 'and says so');
$res = quote($sim, 'alfa', '{"application_id":"x","vehicle":{"category":"B"}}');
is($res->{status}, 400, 'missing fields are 400');
$res = quote($sim, 'alfa', payload(category => 'Q'));
is($res->{status}, 400, 'unknown category is 400');
$res = quote($sim, 'alfa', payload(kbm => 'Z'));
is($res->{status}, 400, 'bad kbm_class is 400');
$res = quote($sim, 'alfa', 'x' x 70000);
is($res->{status}, 413, 'body over 64 KB is 413');
$res = OsagoTest::http(GET => "http://127.0.0.1:$sim->{port}/insurers/alfa/quote");
is($res->{status}, 405, 'GET on a quote url is 405');
$res = OsagoTest::http(GET => "http://127.0.0.1:$sim->{port}/nowhere");
is($res->{status}, 404, 'unknown path is 404');

my ($status, $took) = stop_sim($sim);
is($status, 0, 'exits 0 on SIGTERM');
unlike(OsagoTest::_slurp($sim->{err}), qr/AddressSanitizer|LeakSanitizer|runtime error/,
       'no sanitizer reports');

# ===== latency ===============================================================================
$sim = start_sim('--insurers', 'alfa', '--latency-ms', '100-200');
my $r = fire($sim->{port}, [ map { [ '/insurers/alfa/quote', payload() ] } 1 .. 40 ]);
my @lat = sort { $a <=> $b } map { $_->{elapsed} // 99 } @$r;
is(scalar(grep { ($_->{status} // 0) == 200 } @$r), 40, '40 calls answered');
ok($lat[0] >= 0.095, sprintf('none faster than 100 ms (min %.3f)', $lat[0]));
my $med = OsagoTest::median(@lat);
ok($med >= 0.1 && $med <= 0.25, sprintf('median within the range (%.3f s)', $med));
ok($lat[-1] < 1.0, sprintf('none much slower than 200 ms (max %.3f)', $lat[-1]));
stop_sim($sim);

# --timing-log: a line per priced answer with the insurer's own time, which bench/worker.sh
# takes off an application's latency; refused calls and odd ids do not break the format.
{
    my $log = "$DIR/timing.log";
    $sim = start_sim('--insurers', 'alfa,vsk', '--latency-ms', '150-150', '--timing-log', $log);
    my $id = '0b4f6c1e-3d2a-4c8e-9f10-7a6b5c4d3e2f';
    my $t0 = time;
    is(quote($sim, 'alfa', payload(id => $id))->{status}, 200, 'timing: alfa answers');
    is(quote($sim, 'vsk', payload(id => "x y\nz"))->{status}, 200, 'timing: vsk answers an odd id');
    is(quote($sim, 'alfa', '{')->{status}, 400, 'timing: a malformed body is refused');
    my $t1 = time;
    stop_sim($sim);
    my @lines = split /\n/, OsagoTest::_slurp($log);
    is(scalar @lines, 2, 'timing: one line per priced answer') or diag(join "\n", @lines);
    my @f = map { [ split / / ] } @lines;
    is_deeply([ map { scalar @$_ } @f ], [ 4, 4 ], 'timing: four fields a line');
    is("$f[0][0] $f[0][1]", "$id alfa", 'timing: the application and the insurer');
    is("$f[1][0] $f[1][1]", '- vsk', 'timing: an id that is not one word is logged as -');
    my $took = $f[0][3] - $f[0][2];
    ok($took >= 149 && $took < 1000 * ($t1 - $t0), "timing: alfa took its 150 ms ($took)");
    ok($f[0][2] >= int($t0 * 1000) - 1 && $f[1][3] <= $t1 * 1000 + 1,
       'timing: Unix milliseconds within the calls');
}

# ===== fault injection =======================================================================
$sim = start_sim('--insurers', 'alfa,ingos,reso,vsk', '--latency-ms', 0, '--seed', 3,
                 '--insurer-opts', 'alfa:error=0.5,status=503',
                 '--insurer-opts', 'ingos:timeout=0.3',
                 '--insurer-opts', 'reso:malformed=0.4',
                 '--insurer-opts', 'vsk:error=0.2,timeout=0.2,malformed=0.2,latency=5-10');

$r = fire($sim->{port}, [ map { [ '/insurers/alfa/quote', payload() ] } 1 .. 200 ]);
my $errs = grep { ($_->{status} // 0) == 503 } @$r;
my $oks  = grep { ($_->{status} // 0) == 200 && decodes($_->{body}) } @$r;
ok($errs >= 70 && $errs <= 130, "error=0.5: $errs of 200 answered 503");
is($errs + $oks, 200, 'the rest are good quotes');
my ($e) = grep { ($_->{status} // 0) == 503 } @$r;
is(decodes($e->{body})->{error}, 'insurer_unavailable', 'the error has a JSON body');

$r = fire($sim->{port}, [ map { [ '/insurers/ingos/quote', payload() ] } 1 .. 100 ],
          timeout => 1.5);
my $held = grep { !defined $_->{status} } @$r;
ok($held >= 15 && $held <= 45, "timeout=0.3: $held of 100 never answered");
ok(!(grep { !defined $_->{status} && $_->{closed} } @$r), 'held calls stay open');
is(scalar(grep { ($_->{status} // 0) == 200 } @$r), 100 - $held, 'the others answered');

$r = fire($sim->{port}, [ map { [ '/insurers/reso/quote', payload() ] } 1 .. 200 ]);
my $bad = grep { ($_->{status} // 0) == 200 && !(decodes($_->{body}) || {})->{premium_rub} } @$r;
is(scalar(grep { ($_->{status} // 0) == 200 } @$r), 200, 'malformed answers are still 200')
    or diag 'what came back instead: ' . join ', ', map { "$_->[0] x $_->[1]" } do {
        my %n; $n{ defined $_->{status} ? "HTTP $_->{status}" : $_->{closed} ? 'closed unanswered' : 'nothing in time' }++ for @$r;
        map { [ $_, $n{$_} ] } sort keys %n };
ok($bad >= 50 && $bad <= 110, "malformed=0.4: $bad of 200 unusable bodies");

$r = fire($sim->{port}, [ map { [ '/insurers/vsk/quote', payload() ] } 1 .. 300 ], timeout => 1.5);
my %kinds = (error => 0, timeout => 0, malformed => 0, ok => 0);
for (@$r) {
    if (!defined $_->{status}) { $kinds{timeout}++ }
    elsif ($_->{status} == 500) { $kinds{error}++ }
    elsif (!(decodes($_->{body}) || {})->{premium_rub}) { $kinds{malformed}++ }
    else { $kinds{ok}++ }
}
ok(!(grep { $kinds{$_} < 25 || $kinds{$_} > 95 } qw(error timeout malformed))
   && $kinds{ok} >= 90 && $kinds{ok} <= 150,
   "mixed 0.2/0.2/0.2 (default status 500): " . join(', ', map { "$_ $kinds{$_}" } sort keys %kinds));

# Stopping with calls held: they are closed unanswered, and the process exits promptly.
$r = undef;
my @held = map {
    my $s = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $sim->{port}) or die $!;
    my $b = payload();
    print {$s} "POST /insurers/ingos/quote HTTP/1.1\r\nHost: x\r\nContent-Length: "
             . length($b) . "\r\n\r\n$b";
    $s } 1 .. 30;
sleep 0.3;
($status, $took) = stop_sim($sim);
is($status, 0, 'exits 0 on SIGTERM with held calls');
ok($took < 3, sprintf('and within 3 s (%.2f s)', $took));
unlike(OsagoTest::_slurp($sim->{err}), qr/AddressSanitizer|LeakSanitizer|runtime error/,
       'no sanitizer reports');
close $_ for @held;

# ===== concurrency: 500 calls parked in a 3 s latency at once ====================================
# (3 s: under CI's parallel tests, with the sanitizer build, the 500 requests took over a second
# to arrive, and the first answers then left before the last requests came, so fewer were held)
$sim = start_sim('--insurers', 'alfa', '--latency-ms', 3000);
my $t0 = time;
$r = fire($sim->{port}, [ map { [ '/insurers/alfa/quote', payload(id => "c$_") ] } 1 .. 500 ]);
my $total = time - $t0;
is(scalar(grep { ($_->{status} // 0) == 200 } @$r), 500, '500 concurrent calls answered');
ok($total < 6, sprintf('all 500 in %.2f s (serialised would be 1,500 s)', $total));
my $health = decodes(OsagoTest::http(GET => "http://127.0.0.1:$sim->{port}/healthz")->{content});
is($health->{waiting}, 0, '/healthz: none waiting afterwards');
# fire() opens every connection before sending, so all 500 were held together (the count a
# client's concurrency limit is checked against, t/66)
is($health->{max_waiting}, 500, '/healthz: max_waiting 500');
stop_sim($sim);

# ===== flags ===================================================================================
for my $case ([ [ '--listen', '10.0.0.1:8090' ], 'a non-loopback address' ],
              [ [ '--insurer-opts', 'nosuch:error=0.1' ], 'opts for an unknown insurer' ],
              [ [ '--insurer-opts', 'alfa:error=1.5' ], 'a rate over 1' ],
              [ [ '--insurer-opts', 'alfa:error=0.6,timeout=0.6' ], 'rates adding up over 1' ],
              [ [ '--insurer-opts', 'alfa:status=200' ], 'a non-error status' ],
              [ [ '--latency-ms', '200-100' ], 'an empty latency range' ],
              [ [ '--insurers', 'Alfa!' ], 'a bad insurer code' ],
              [ [ '--seed', '-5' ], 'a negative seed' ],
              [ [ '--seed', ' -5' ], 'a negative seed after a blank (strtoull skips it)' ],
              [ [ '--seed', ' 5' ], 'a seed with a leading blank' ],
              [ [ '--seed', '+5' ], 'a seed with a sign' ]) {
    # Under a timeout: a flag wrongly accepted starts a server that never exits (124, a failure)
    my ($c, undef, $e) = OsagoTest::run_cmd('timeout', 10, $BIN, '--listen', '127.0.0.1:0',
                                            @{ $case->[0] });
    is($c, 2, "rejects $case->[1]") or diag($e);
}

done_testing;
