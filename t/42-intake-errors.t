#!/usr/bin/perl
# Intake refusals: the bad-input table (each body gets its own problem type and JSON pointer),
# Idempotency-Key, media type, size limits (Content-Length and chunked), methods, slow bodies;
# and NOTHING of a refused request lands in Redis. Then the inputs that must be accepted
# (charset parameter, chunked, 64-character key, unlimited drivers, plate, boundaries).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Select;
use IO::Socket::IP;
use JSON::PP ();
use Time::HiRes qw(time sleep);
use OsagoTest;
use OsagoIntake qw(:all);

my $r = OsagoTest::Redis->new;
my $n = OsagoTest::Nginx->new(redis => $r, workers => 2, http => <<'HTTP');
    osago_redis_server %%REDIS%%;
    osago_partner_cache_ttl 1s;
    server {
        listen 127.0.0.1:%%PORT%%;
        client_body_timeout 1s;
        location = /osago/application { osago_limit on; osago_intake; }
        location = /metrics { osago_metrics; }
    }
    server {
        listen 127.0.0.1:%%PORT2%%;
        location = /osago/application {
            osago_limit on;
            osago_intake;
            osago_intake_max_depth 1;
            osago_intake_max_body 1k;
        }
    }
HTTP

my $P = OsagoTest::add_partner($r, name => 'acme', rate => 1000, burst => 1000);
my $url2 = 'http://127.0.0.1:' . $n->port2 . '/osago/application';

# Nothing of a refused request may be in Redis; what a broken module left there is reported and
# removed, so that the next case is judged on its own.
sub nothing_landed {
    my ($what) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my $f = footprint($r);
    my @bad = (@{ $f->{apps} }, @{ $f->{idem} }, @{ $f->{users} },
               $f->{stream} ? 'osago:intake' : ());
    ok(!@bad, "$what: nothing in Redis") or diag explain \@bad;
    resp($r, 'DEL', @bad) if @bad;
}

my $m0 = metrics($n);
my %want;          # expected rejections by metric reason
my $parsed = 0;    # bodies that reach the parser
my $body_rejects = 0;

# --- the bad-input table ----------------------------------------------------------------------
my $vin  = 'XTA21099012345678';
my $good = app_json();
sub swap { my ($from, $to, $src) = @_; my $b = $src // $good; $b =~ s/\Q$from\E/$to/ or die "swap $from"; $b }

my $today = date_from_today(0);
my @table = (
    # [ what, body, type, pointer (string: exact, regexp, undef: not checked) ]
    [ 'empty body', '', 'empty-body' ],
    [ '{}', '{}', 'missing-field', qr{^/(vehicle|owner|drivers|unlimited_drivers|period_months|start_date)$} ],
    [ 'truncated JSON', substr($good, 0, 60), 'malformed-json' ],
    [ 'truncated just before the last brace', substr($good, 0, -1), 'malformed-json' ],
    [ 'not JSON', 'vehicle=B&power_hp=150', 'malformed-json' ],
    [ 'trailing garbage', "$good x", 'malformed-json' ],
    [ 'two documents', "$good$good", 'malformed-json' ],
    [ 'single quotes', swap('"B"', "'B'"), 'malformed-json' ],
    [ 'trailing comma in an object', swap('"year":2018}', '"year":2018,}'), 'malformed-json' ],
    [ 'trailing comma in an array', swap('"2005-06-01"}]', '"2005-06-01"},]'), 'malformed-json' ],
    [ '10,000-deep [[[...]]]', ('[' x 10_000) . (']' x 10_000), 'too-deep' ],
    [ '10,000-deep [[[ unterminated', '[' x 10_000, 'too-deep' ],
    [ 'invalid UTF-8 (0xff) in a string', swap($vin, "XTA\xff1099012345678"), 'invalid-utf8' ],
    [ 'truncated UTF-8 sequence in a string', swap('"77"', "\"7\xd0\""), 'invalid-utf8' ],
    [ 'lone continuation byte', swap('"B"', "\"\x80\""), 'invalid-utf8' ],
    [ 'overlong UTF-8 encoding', swap('"B"', "\"\xc0\xaf\""), 'invalid-utf8' ],
    [ 'invalid UTF-8 in a member name', swap('"vehicle"', "\"veh\xffcle\""), 'invalid-utf8' ],
    [ 'UTF-8 encoded surrogate', swap('"B"', "\"\xed\xa0\x80\""), 'invalid-utf8' ],
    [ 'NUL byte inside a string (raw control characters are not JSON)', swap($vin, "XTA2109\x00012345678"),
      'malformed-json' ],
    [ 'raw tab inside a string', swap('"77"', "\"7\t7\""), 'malformed-json' ],
    [ 'NUL byte after the document', "$good\x00", 'malformed-json' ],
    [ 'NUL byte before the document', "\x00$good", 'malformed-json' ],
    [ 'escaped \u0000 in the VIN', swap($vin, 'XTA2109\u0000012345678'), 'invalid-field', '/vehicle/vin' ],
    [ 'power_hp 0', app_json(vehicle => { power_hp => 0 }), 'invalid-field', '/vehicle/power_hp' ],
    [ 'power_hp 1501', app_json(vehicle => { power_hp => 1501 }), 'invalid-field', '/vehicle/power_hp' ],
    [ 'power_hp -1', app_json(vehicle => { power_hp => -1 }), 'invalid-field', '/vehicle/power_hp' ],
    [ 'power_hp 1e999', swap('"power_hp":150', '"power_hp":1e999'), 'invalid-field', '/vehicle/power_hp' ],
    [ 'power_hp 99999999999999999999999', swap('"power_hp":150', '"power_hp":99999999999999999999999'),
      'invalid-field', '/vehicle/power_hp' ],
    [ 'power_hp 150.5', swap('"power_hp":150', '"power_hp":150.5'), 'invalid-field', '/vehicle/power_hp' ],
    [ 'power_hp "150" (a string)', app_json(vehicle => { power_hp => '150' }), 'invalid-field', '/vehicle/power_hp' ],
    [ 'power_hp null', swap('"power_hp":150', '"power_hp":null'), 'invalid-field', '/vehicle/power_hp' ],
    [ 'power_hp true', swap('"power_hp":150', '"power_hp":true'), 'invalid-field', '/vehicle/power_hp' ],
    [ 'year "2018" (a string)', app_json(vehicle => { year => '2018' }), 'invalid-field', '/vehicle/year' ],
    [ 'period_months "12" (a string)', app_json(period_months => '12'), 'invalid-field', '/period_months' ],
    [ 'period_months 2', app_json(period_months => 2), 'invalid-field', '/period_months' ],
    [ 'period_months 13', app_json(period_months => 13), 'invalid-field', '/period_months' ],
    [ 'vehicle is an array', app_json(vehicle => []), 'invalid-field', '/vehicle' ],
    [ 'vehicle is a string', app_json(vehicle => 'car'), 'invalid-field', '/vehicle' ],
    [ 'drivers is an object', app_json(drivers => {}), 'invalid-field', '/drivers' ],
    [ 'drivers []', app_json(drivers => []), 'invalid-field', '/drivers' ],
    [ 'six drivers', app_json(drivers => [ map { { birth_date => '1985-04-12',
                                                   license_issued_date => '2005-06-01' } } 1 .. 6 ]),
      'invalid-field', '/drivers' ],
    [ 'driver is a number', app_json(drivers => [1]), 'invalid-field', '/drivers/0' ],
    [ 'unlimited_drivers "yes"', app_json(drivers => undef, unlimited_drivers => 'yes'),
      'invalid-field', '/unlimited_drivers' ],
    [ 'VIN of 16 characters', app_json(vehicle => { vin => 'XTA2109901234567' }), 'invalid-field', '/vehicle/vin' ],
    [ 'VIN with the letter O', app_json(vehicle => { vin => 'XTA21099O12345678' }), 'invalid-field', '/vehicle/vin' ],
    [ 'category "Z"', app_json(vehicle => { category => 'Z' }), 'invalid-field', '/vehicle/category' ],
    [ 'region_code "ab"', app_json(owner => { region_code => 'ab' }), 'invalid-field', '/owner/region_code' ],
    [ 'region_code 77 (a number)', app_json(owner => { region_code => 77 }), 'invalid-field', '/owner/region_code' ],
    [ 'kbm_class "99"', app_json(kbm_class => '99'), 'invalid-field', '/kbm_class' ],
    [ 'start_date yesterday', app_json(start_date => date_from_today(-1)), 'invalid-field', '/start_date' ],
    [ 'start_date in 61 days', app_json(start_date => date_from_today(61)), 'invalid-field', '/start_date' ],
    [ 'start_date not a date', app_json(start_date => 'tomorrow'), 'invalid-field', '/start_date' ],
    [ 'start_date 2027-13-01', app_json(start_date => '2027-13-01'), 'invalid-field', '/start_date' ],
    [ 'owner aged 16', app_json(owner => { birth_date => date_from_today(1, years => -17) }),
      'invalid-field', '/owner/birth_date' ],
    [ 'driver aged 16', app_json(drivers => [ { birth_date => date_from_today(1, years => -17),
                                                 license_issued_date => $today } ]),
      'invalid-field', '/drivers/0/birth_date' ],
    [ 'licence at 15', app_json(drivers => [ { birth_date => '1985-04-12',
                                                license_issued_date => '2000-06-01' } ]),
      'invalid-field', '/drivers/0/license_issued_date' ],
    [ 'second driver invalid', app_json(drivers => [
          { birth_date => '1985-04-12', license_issued_date => '2005-06-01' },
          { birth_date => '1990-01-01', license_issued_date => 'soon' } ]),
      'invalid-field', '/drivers/1/license_issued_date' ],
    [ 'duplicate top-level key', swap('"period_months":12', '"period_months":12,"period_months":6'),
      'duplicate-field', '/period_months' ],
    [ 'duplicate key with the same value', swap('"period_months":12', '"period_months":12,"period_months":12'),
      'duplicate-field', '/period_months' ],
    [ 'duplicate nested key', swap('"power_hp":150', '"power_hp":150,"power_hp":150'),
      'duplicate-field', '/vehicle/power_hp' ],
    [ 'duplicate object', swap('"period_months":12', '"period_months":12,"owner":{"region_code":"77","birth_date":"1985-04-12"}'),
      'duplicate-field', '/owner' ],
    [ 'unknown top-level field', app_json(promo => 'x'), 'unknown-field', '/promo' ],
    [ 'unknown vehicle field', app_json(vehicle => { color => 'red' }), 'unknown-field', '/vehicle/color' ],
    [ 'unknown driver field', app_json(drivers => [ { birth_date => '1985-04-12',
                                                       license_issued_date => '2005-06-01', name => 'Ivan' } ]),
      'unknown-field', '/drivers/0/name' ],
    [ 'unknown field named a/b~c (pointer escaping)', app_json('a/b~c' => 1), 'unknown-field', '/a~1b~0c' ],
    [ 'missing vehicle.power_hp', app_json(vehicle => { power_hp => undef }), 'missing-field', '/vehicle/power_hp' ],
    [ 'missing owner', app_json(owner => undef), 'missing-field', '/owner' ],
    [ 'missing owner.region_code', app_json(owner => { region_code => undef }), 'missing-field', '/owner/region_code' ],
    [ 'missing start_date', app_json(start_date => undef), 'missing-field', '/start_date' ],
    [ 'missing period_months', app_json(period_months => undef), 'missing-field', '/period_months' ],
    [ 'no drivers and no unlimited_drivers', app_json(drivers => undef), 'missing-field',
      qr{^/(drivers|unlimited_drivers)$} ],
    [ 'neither vin nor plate', app_json(vehicle => { vin => undef }), 'missing-field',
      qr{^/vehicle(/vin|/plate)?$} ],
    [ 'missing driver licence date', app_json(drivers => [ { birth_date => '1985-04-12' } ]),
      'missing-field', '/drivers/0/license_issued_date' ],
);

for my $case (@table) {
    my ($what, $body, $type, $pointer) = @$case;
    my $res = submit($n, key => $P, idem => idem_key('bad'), body => $body);
    $parsed++;
    is_problem($res, 400, $type, "bad input: $what", defined $pointer ? (pointer => $pointer) : ());
    $body_rejects++ if $res->{status} == 400;
    nothing_landed("bad input: $what");
}
$want{invalid_body} += @table;

# the depth limit is the directive's: max depth 1 refuses even a valid application
my $res = submit($n, url => $url2, key => $P, idem => idem_key('depth'), body => $good);
$parsed++;
is_problem($res, 400, 'too-deep', 'osago_intake_max_depth 1: a valid application is too deep');
$body_rejects++ if $res->{status} == 400;
$want{invalid_body}++;
nothing_landed('too deep for the directive');

# --- Idempotency-Key --------------------------------------------------------------------------
$res = submit($n, key => $P, body => $good);
is_problem($res, 400, 'idempotency-key-missing', 'no Idempotency-Key');
$want{idempotency_key_missing}++;
for my $bad ('k' x 65, 'a:b', '*', 'a b', 'key/1', 'key.1', 'osago:idem:*', "k\x{7e}y") {
    $res = submit($n, key => $P, idem => $bad, body => $good);
    is_problem($res, 400, 'idempotency-key-malformed', 'Idempotency-Key ' . substr($bad, 0, 20)
               . (length $bad > 20 ? '... (' . length($bad) . ' chars)' : ''));
    $want{idempotency_key_malformed}++;
}
for my $raw ([ 'empty' => '' ], [ 'non-ASCII (UTF-8)' => "\xd0\xba\xd0\xbb\xd1\x8e\xd1\x87" ],
             [ 'Latin-1 byte' => "caf\xe9" ], [ 'control byte' => "a\x01b" ]) {
    my ($what, $v) = @$raw;
    $res = OsagoTest::raw_http($n->port, post_request(key => $P, body => $good,
                                                     headers => { 'Idempotency-Key' => $v }));
    is_problem($res, 400, 'idempotency-key-malformed', "Idempotency-Key $what");
    $want{idempotency_key_malformed}++;
}
# two keys, each valid: which one the client meant is anyone's guess (the first used to win)
$res = OsagoTest::raw_http($n->port, post_request(key => $P, idem => idem_key('first'), body => $good,
                                                 headers => { 'idempotency-key' => idem_key('second') }));
is_problem($res, 400, 'idempotency-key-malformed', 'two Idempotency-Key headers');
like((OsagoTest::problem($res) || {})->{detail} // '', qr/one Idempotency-Key header/,
     '  the detail says to send one');
$want{idempotency_key_malformed}++;
nothing_landed('Idempotency-Key refusals');

# --- media type -------------------------------------------------------------------------------
for my $ct (undef, 'text/plain', 'application/x-www-form-urlencoded', 'application/jsonp',
            'application/json-seq', 'application/problem+json', 'text/json', 'multipart/form-data',
            # a media type, then anything but parameters
            'application/json x', 'application/json text/html', "application/json\tcharset=utf-8") {
    $res = submit($n, key => $P, idem => idem_key('ct'), body => $good, type => $ct);
    is_problem($res, 415, 'unsupported-media-type', 'Content-Type ' . ($ct // '(none)'));
    $want{media_type}++;
}
nothing_landed('media type refusals');

# --- size -------------------------------------------------------------------------------------
my $MiB = '{"pad":"' . ('x' x (1024 * 1024 - 10)) . '"}';
is(length $MiB, 1024 * 1024, '(a 1 MiB body)');
$res = submit($n, key => $P, idem => idem_key('big'), body => $MiB);
is_problem($res, 413, 'body-too-large', '1 MiB body, Content-Length');
$want{too_large}++;

# refused on the Content-Length alone: the answer comes without the body being sent
my $t0 = time;
$res = OsagoTest::raw_http($n->port, post_request(key => $P, idem => idem_key('cl'), body => '')
                           =~ s/Content-Length: 0/Content-Length: 1048576/r, timeout => 1);
is_problem($res, 413, 'body-too-large', 'Content-Length 1 MiB, no body sent');
$want{too_large}++;
$res = OsagoTest::raw_http($n->port, post_request(key => $P, idem => idem_key('cl'), body => '')
                           =~ s/Content-Length: 0/Content-Length: 65537/r, timeout => 1);
is_problem($res, 413, 'body-too-large', 'Content-Length 64 KiB + 1, no body sent');
$want{too_large}++;

# Expect: 100-continue with a Content-Length over the limit: the 413 comes at once, without a
# "100 Continue" that invites the client to upload the megabyte (nginx's own client_max_body_size
# refusal sends none either)
$res = OsagoTest::raw_http($n->port, post_request(key => $P, idem => idem_key('expect'), body => '',
                                                 headers => { Expect => '100-continue' })
                           =~ s/Content-Length: 0/Content-Length: 1048576/r, timeout => 1);
is($res->{status}, 413, 'Expect: 100-continue, Content-Length 1 MiB: 413 without 100 Continue')
    or diag substr($res->{content}, 0, 200);
$want{too_large}++;
# on a keep-alive connection: the client was not invited to send the body and may never do; what
# it sends next must not be discarded as that body, so the connection closes after the answer
for my $case ([ 'over the limit', 1048576, 413 ], [ 'and no Idempotency-Key', 500, 400 ]) {
    my $req = post_request(key => $P, idem => $case->[2] == 400 ? undef : idem_key('expect-ka'),
                           body => '', headers => { Expect => '100-continue' });
    $req =~ s/Content-Length: 0/Content-Length: $case->[1]/;
    $req =~ s/Connection: close/Connection: keep-alive/;
    $res = OsagoTest::raw_http($n->port, $req, timeout => 1);
    is($res->{status}, $case->[2], "Expect: 100-continue, keep-alive, $case->[0]: $case->[2]");
    is(lc(hdr($res, 'connection') // ''), 'close', '  Connection: close');
    $want{ $case->[2] == 413 ? 'too_large' : 'idempotency_key_missing' }++;
}

my $big_chunks = [ map { ' ' x 10_000 } 1 .. 10 ];
$big_chunks->[0] = $good . substr($big_chunks->[0], length $good);
$res = OsagoTest::raw_http($n->port, post_request(key => $P, idem => idem_key('chunk'),
                                                 chunked => $big_chunks));
is_problem($res, 413, 'body-too-large', 'chunked body of 100 KB (over 64 KiB)');
$want{too_large}++;

my $two_k = $good . (' ' x (2048 - length $good));
$res = submit($n, url => $url2, key => $P, idem => idem_key('1k'), body => $two_k);
is_problem($res, 413, 'body-too-large', 'osago_intake_max_body 1k: a 2 KiB body');
$want{too_large}++;
$res = OsagoTest::raw_http($n->port2, post_request(key => $P, idem => idem_key('1kc'),
                                                  chunked => [ $two_k =~ /(.{1,500})/gs ]));
is_problem($res, 413, 'body-too-large', 'osago_intake_max_body 1k: 2 KiB chunked');
$want{too_large}++;

# over nginx's own client_max_body_size (1m): refused by nginx before the module
$res = OsagoTest::raw_http($n->port, post_request(key => $P, idem => idem_key('huge'), body => '')
                           =~ s/Content-Length: 0/Content-Length: 2097152/r, timeout => 1);
is($res->{status}, 413, 'Content-Length 2 MiB: 413');
nothing_landed('size refusals');

# --- methods ----------------------------------------------------------------------------------
for my $m (qw(GET PUT DELETE PATCH)) {
    $res = submit($n, method => $m, key => $P, idem => idem_key('m'), body => $m eq 'GET' ? '' : $good);
    is_problem($res, 405, 'method-not-allowed', "$m");
    is(hdr($res, 'allow'), 'POST', "$m: Allow: POST");
    $want{method}++;
}
nothing_landed('method refusals');

# --- no partner: the limiter answers first ------------------------------------------------------
$res = submit($n, idem => idem_key('nokey'), body => $good);
is_problem($res, 401, 'api-key-missing', 'no X-API-Key');
$res = submit($n, key => OsagoTest::random_key(), idem => idem_key('unknown'), body => $good);
is_problem($res, 401, 'api-key-unknown', 'unknown X-API-Key');
nothing_landed('401');

# --- a slow body: client_body_timeout 1s ------------------------------------------------------
{
    my $req = post_request(key => $P, idem => idem_key('slow'), body => $good);
    my $half = length($req) - int(length($good) / 2);
    my $s = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $n->port, Proto => 'tcp')
        or die "connect: $!";
    binmode $s;
    syswrite($s, substr($req, 0, $half));
    my $t = time;
    my $buf = '';
    my $sel = IO::Select->new($s);
    my $closed = 0;
    while (time - $t < 4) {
        last unless $sel->can_read(4 - (time - $t));
        my $got = sysread($s, $buf, 65536, length $buf);
        if (!$got) { $closed = 1; last }
    }
    my $waited = time - $t;
    ok($closed, sprintf 'half a body, then silence: the connection is closed (after %.1f s)', $waited);
    cmp_ok($waited, '>=', 0.9, 'not before client_body_timeout');
    cmp_ok($waited, '<', 3, 'soon after client_body_timeout');
    ok($buf eq '' || $buf =~ m{^HTTP/1\.1 408 }, 'no answer, or 408') or diag $buf;
    syswrite($s, substr($req, $half));    # the rest, too late
    close $s;
    sleep 0.2;
    nothing_landed('slow body');
}

# --- metrics: every refusal above counted under its reason -------------------------------------
my $m1 = metrics($n);
for my $reason (qw(idempotency_key_missing idempotency_key_malformed media_type too_large method)) {
    is(metric_delta($m0, $m1, 'osago_intake_rejected_total', reason => $reason), $want{$reason} // 0,
       "osago_intake_rejected_total{reason=$reason} +" . ($want{$reason} // 0));
}
is($body_rejects, $want{invalid_body}, "all $want{invalid_body} bad bodies were refused with 400");
is(metric_delta($m0, $m1, 'osago_intake_rejected_total', reason => 'invalid_body'), $body_rejects,
   "osago_intake_rejected_total{reason=invalid_body} +$body_rejects (the 400s the clients saw)");
is(metric_delta($m0, $m1, 'osago_intake_rejected_total', reason => $_), 0, "no $_ rejections")
    for qw(idempotency_key_reused in_progress user_limited unavailable);
is(metric_delta($m0, $m1, 'osago_intake_requests_total'), $want{invalid_body} - $body_rejects,
   'nothing accepted or replayed (except bad bodies a broken validator let through)');
is(metric_delta($m0, $m1, 'osago_intake_parse_seconds_count'), $parsed,
   "osago_intake_parse_seconds_count +$parsed: only bodies that passed the header checks are parsed");

# --- must be accepted ---------------------------------------------------------------------------
my @accept = (
    [ 'Content-Type application/json; charset=utf-8', body => $good, type => 'application/json; charset=utf-8' ],
    [ 'Content-Type application/json;charset=UTF-8', body => app_json(vehicle => { power_hp => 151 }),
      type => 'application/json;charset=UTF-8' ],
    [ 'Content-Type application/json, a tab, then a parameter (RFC 9110 OWS)',
      body => app_json(vehicle => { power_hp => 157 }), type => "application/json\t; charset=utf-8" ],
    [ 'Content-Type application/json, a space, then a parameter',
      body => app_json(vehicle => { power_hp => 158 }), type => 'application/json ; charset=utf-8' ],
    [ 'Content-Type Application/JSON (case-insensitive)', body => app_json(vehicle => { power_hp => 152 }),
      type => 'Application/JSON' ],
    [ 'Idempotency-Key of 64 characters', body => app_json(vehicle => { power_hp => 153 }),
      idem => 'K' x 32 . '0123456789abcdef_-ABCDEFGHIJKLMN' ],
    [ 'Idempotency-Key of 1 character', body => app_json(vehicle => { power_hp => 154 }), idem => 'z' ],
    [ 'unlimited_drivers instead of drivers', body => app_json(drivers => undef, unlimited_drivers => JSON::PP::true()) ],
    [ 'plate instead of the VIN', body => app_json(vehicle => { vin => undef, plate => "\x{410}123\x{412}\x{421}77" }) ],
    [ 'plate and VIN', body => app_json(vehicle => { plate => "\x{410}124\x{412}\x{421}77" }) ],
    [ 'kbm_class "3"', body => app_json(kbm_class => '3') ],
    [ 'power_hp 1 and period_months 3', body => app_json(vehicle => { power_hp => 1 }, period_months => 3) ],
    [ 'power_hp 1500', body => app_json(vehicle => { power_hp => 1500 }) ],
    [ 'five drivers', body => app_json(drivers => [ map { { birth_date => "198$_-01-01",
                                                            license_issued_date => "200$_-01-01" } } 1 .. 5 ]) ],
    [ 'start_date in 30 days', body => app_json(start_date => date_from_today(30)) ],
    [ 'body of exactly 64 KiB', body => do { my $b = app_json(vehicle => { power_hp => 155 });
                                              $b . (' ' x (65536 - length $b)) } ],
    [ 'JSON with insignificant whitespace', body => do { my $b = app_json(vehicle => { power_hp => 156 });
                                                         $b =~ s/,/ ,\n\t/g; " \r\n$b\n" } ],
);
my $accepted = 0;
my $jx = JSON::PP->new->utf8;
my %sent;    # application id => [ what, body ]
for my $case (@accept) {
    my ($what, %o) = @$case;
    $res = submit($n, key => $P, idem => $o{idem} // idem_key('ok'), %o);
    is($res->{status}, 202, "accepted: $what") or diag explain { status => $res->{status}, content => $res->{content} };
    next unless $res->{status} == 202;
    $accepted++;
    $sent{ (eval { $jx->decode($res->{content}) } || {})->{id} // '' } = [ $what, $o{body} ];
}
my %payload = map { ($_->{fields}{app_id} // '') => $_->{fields}{payload} } @{ footprint($r)->{entries} };
for my $id (sort keys %sent) {
    my ($what, $body) = @{ $sent{$id} };
    is_deeply(eval { $jx->decode($payload{$id} // '') }, $jx->decode($body),
              "stream payload is the application as sent: $what");
}

# a valid chunked body
$res = OsagoTest::raw_http($n->port, post_request(key => $P, idem => idem_key('chunked'),
           chunked => [ app_json(vehicle => { power_hp => 157 }) =~ /(.{1,37})/gs ]));
is($res->{status}, 202, 'accepted: a valid chunked body') or diag explain $res;
$accepted++ if $res->{status} == 202;
my $cid = (OsagoTest::problem($res) || {})->{id} // '';
my ($ce) = grep { ($_->{fields}{app_id} // '') eq $cid } @{ footprint($r)->{entries} };
is_deeply(JSON::PP->new->utf8->decode($ce->{fields}{payload} // 'null'),
          app_data(vehicle => { power_hp => 157 }), 'the chunked body arrived whole in the stream');

# slow but steady: every pause shorter than client_body_timeout
{
    my $req = post_request(key => $P, idem => idem_key('steady'), body => app_json(vehicle => { power_hp => 158 }));
    my $s = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $n->port, Proto => 'tcp')
        or die "connect: $!";
    binmode $s;
    my @parts = $req =~ /(.{1,120})/gs;
    my $t = time;
    for my $p (@parts) { syswrite($s, $p); sleep 0.25 if time - $t < 1.6 }
    my $buf = '';
    my $sel = IO::Select->new($s);
    while ($sel->can_read(5)) { sysread($s, $buf, 65536, length $buf) or last }
    close $s;
    like($buf, qr{^HTTP/1\.1 202 }, sprintf 'accepted: a body trickling in over %.1f s, no pause over 1 s', time - $t);
    $accepted++ if $buf =~ m{^HTTP/1\.1 202 };
}

# Expect: 100-continue with a valid body: 100 Continue, then the body, then 202
{
    my $body = app_json(vehicle => { power_hp => 159 });
    my $req = post_request(key => $P, idem => idem_key('expect-ok'), body => $body,
                           headers => { Expect => '100-continue' });
    my $s = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $n->port, Proto => 'tcp')
        or die "connect: $!";
    binmode $s;
    syswrite($s, substr($req, 0, length($req) - length $body));
    my $buf = '';
    my $sel = IO::Select->new($s);
    while ($buf !~ /\r\n\r\n/ && $sel->can_read(3)) { sysread($s, $buf, 65536, length $buf) or last }
    like($buf, qr{^HTTP/1\.1 100 Continue\r\n}, 'Expect: 100-continue with a valid application: 100 Continue');
    syswrite($s, $body);
    $buf = '';
    while ($sel->can_read(5)) { sysread($s, $buf, 65536, length $buf) or last }
    close $s;
    like($buf, qr{^HTTP/1\.1 202 }, 'then 202 for the body');
    $accepted++ if $buf =~ m{^HTTP/1\.1 202 };
}

my $f = footprint($r);
is($f->{xlen}, $accepted, "one stream entry per accepted request ($accepted)");
is(scalar @{ $f->{apps} }, $accepted, 'one read model each');

unlike($n->error_log, qr/\[(alert|emerg|crit)\]|segfault|exited on signal/, 'no alerts in error.log')
    or diag join "\n", grep { /\[(alert|emerg|crit)\]|signal/ } split /\n/, $n->error_log;

done_testing;
