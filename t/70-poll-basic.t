#!/usr/bin/perl
# osago_poll, GET /osago/application/{id}[?latest=ms]: answers at once (no latest, newer, completed:
# exact bytes, application/json, Cache-Control: no-store), parking woken by a PUBLISH within
# milliseconds, 304 after osago_poll_timeout, publishes that must not wake (another id, nothing
# newer), 404 for unknown and another partner's applications alike, 400 for malformed ids and
# latest (with no Redis read, seen by MONITOR), 405, 401, upper-case ids, HEAD, a read model that
# is not ours (503), the poll metrics; and end to end with the real worker (PostgreSQL, devbroker,
# insurer-sim): a client that long-polls sees accepted -> in_progress -> completed.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use JSON::PP ();
use Time::HiRes qw(time sleep);
use OsagoTest;
use OsagoIntake qw(:all);
use OsagoPoll qw(:all);

my $T0 = time;
my $J = JSON::PP->new->utf8;
sub jdec { my $v = eval { $J->decode($_[0] // '') }; $v }

my $r = OsagoTest::Redis->new;
my $n = OsagoTest::Nginx->new(redis => $r, workers => 2, http => poll_http(
    timeout => '2s',
    extra   => '        location = /osago/application { osago_limit on; osago_intake; }',
    http_extra => <<'HTTP'));
    server {
        listen 127.0.0.1:%%PORT2%%;
        location ~ ^/osago/application/(?<app_id>[^/]+)$ {
            osago_limit on;
            osago_poll $app_id;
            osago_poll_timeout 5s;
        }
    }
HTTP
my $P5 = $n->port2;    # the same, with a 5 s poll timeout

my $ACME = OsagoTest::add_partner($r, name => 'acme', rate => 100000, burst => 100000);
my $BETA = OsagoTest::add_partner($r, name => 'beta', rate => 100000, burst => 100000);
my $ACM  = OsagoTest::add_partner($r, name => 'acm',  rate => 100000, burst => 100000);

# --- answered at once ---------------------------------------------------------------------------
# UTF-8, an escaped quote and a slash: the document must come back byte for byte
my $ID = uuid4();
my $DOC = app_doc($ID, status => 'in_progress', updated_at => 1700000000123, insurers => [
    { code => 'alfa', name => "\xd0\x90\xd0\xbb\xd1\x8c\xd1\x84\xd0\xb0 \\\"AO\\\" 1/2", status => 'ok', premium => '8123.45' },
    { code => 'ingos', name => 'Ingos', status => 'pending' } ]);
put_app($r, $ID, owner => 'acme', updated_at => 1700000000123, doc => $DOC);
my $m0 = poll_metrics($n);

my $res = poll_get($n, $ID, key => $ACME);
is($res->{status}, 200, 'no latest: 200') or diag explain $res;
is($res->{content}, $DOC, 'the document, byte for byte');
is(hdr($res, 'content-type'), 'application/json', 'Content-Type: application/json');
is(hdr($res, 'content-length'), length $DOC, 'Content-Length is the document length');
is(hdr($res, 'cache-control'), 'no-store', 'Cache-Control: no-store');
cmp_ok($res->{elapsed}, '<', 0.5, sprintf 'answered at once (%.3f s)', $res->{elapsed});

for my $latest (0, 1700000000122, 1) {
    $res = poll_get($n, $ID, key => $ACME, latest => $latest);
    ok($res->{status} == 200 && $res->{content} eq $DOC && $res->{elapsed} < 0.5,
       sprintf 'latest=%s (older than updated_at): 200 with the document at once (%.3f s)',
               $latest, $res->{elapsed}) or diag explain $res;
}

# upper and mixed case: the same application, and the Redis key is lower-cased
my $cmds = $r->monitor(sub {
    $res = poll_get($n, uc $ID, key => $ACME);
    is($res->{status}, 200, 'upper-case id: 200');
    is($res->{content}, $DOC, 'upper-case id: the same document');
    my $i = 0;
    my $mixed = join '', map { $i++ % 2 ? uc $_ : $_ } split //, $ID;
    $res = poll_get($n, $mixed, key => $ACME);
    is($res->{status} . ' ' . $res->{content}, "200 $DOC", "mixed-case id ($mixed): the same");
});
# the application's reads only: the limiter may refresh its cached partner meanwhile (an HMGET of
# osago:partner:... from its script), which made this count 3 on a slow machine
my @hm = grep { ($_->[1] // '') eq 'hmget' && ($_->[2] // '') =~ /^osago:app:/i } @$cmds;
is(scalar @hm, 2, 'upper/mixed case: one HMGET each');
ok(!grep({ $_->[2] ne "osago:app:$ID" } @hm), 'on the lower-cased key osago:app:{id}')
    or diag explain \@hm;
is_deeply([ @{ $hm[0] || [] }[ 3 .. 5 ] ], [qw(doc owner updated_at)],
          'HMGET osago:app:{id} doc owner updated_at');

# completed never parks, whatever latest says
my $CID = uuid4();
my $CDOC = app_doc($CID, status => 'completed', updated_at => 5000,
                   insurers => [ { code => 'alfa', status => 'ok', premium => 9000 } ]);
put_app($r, $CID, owner => 'acme', updated_at => 5000, doc => $CDOC);
for my $latest (5000, 5001, 999999999999999999) {
    $res = poll_get($n, $CID, key => $ACME, latest => $latest);
    ok($res->{status} == 200 && $res->{content} eq $CDOC && $res->{elapsed} < 0.5,
       sprintf 'completed, latest=%s >= updated_at: 200 at once, not parked (%.3f s)',
               $latest, $res->{elapsed}) or diag explain $res;
}
my $m1 = poll_metrics($n);
is(metric_delta($m0, $m1, 'osago_poll_answered_total', how => 'at_once'), 9,
   'osago_poll_answered_total{how="at_once"} counted all 9');
is(metric_delta($m0, $m1, 'osago_poll_reads_total'), 9, 'osago_poll_reads_total: one read each');
is(OsagoTest::prom_sum($m1, 'osago_poll_parked'), 0, 'nothing parked');

# --- 404: unknown, another partner's (indistinguishable) ----------------------------------------
my @nf;
for my $case ([ 'unknown id', uuid4(), $ACME, undef ],
              [ 'unknown id, with latest', uuid4(), $ACME, 5 ],
              [ "another partner's application", $ID, $BETA, undef ],
              [ "another partner's application, with latest", $ID, $BETA, 1 ],
              [ "another partner's, latest = its updated_at (would park)", $ID, $BETA, 1700000000123 ],
              [ 'a partner whose name is a prefix of the owner', $ID, $ACM, undef ]) {
    my ($what, $id, $key, $latest) = @$case;
    $res = poll_get($n, $id, key => $key, latest => $latest);
    is_problem($res, 404, 'application-not-found', $what);
    cmp_ok($res->{elapsed}, '<', 0.5, "$what: at once");
    unlike($res->{content}, qr/acme|\Q$ID\E/, "$what: names neither the owner nor the id");
    push @nf, $res->{content};
}
is(scalar(keys %{ { map { $_ => 1 } @nf } }), 1,
   'unknown and foreign applications get the very same body');

# --- 400: malformed ids, malformed latest; nothing is read from Redis ----------------------------
my @bad_ids = (
    [ 'too short', 'abc' ],
    [ '35 chars', substr($ID, 0, 35) ],
    [ '37 chars', $ID . 'a' ],
    [ 'non-hex', substr($ID, 0, 35) . 'g' ],
    [ 'all x', 'x' x 36 ],
    [ '36 zeros, no dashes', '0' x 36 ],
    [ 'dashes moved', substr($ID, 1, 8) . '-' . substr($ID, 9, 27) ],
    [ 'no dashes (32 hex)', $ID =~ s/-//gr ],
    [ 'glob *', '*' ],
    [ 'glob * at full length', substr($ID, 0, 35) . '*' ],
    [ 'braces {x}', '{x}' ],
    [ 'braces, encoded', '%7Bx%7D' ],
    [ 'hash tag at full length', '{' . substr($ID, 1, 34) . '}' ],
    [ 'space', 'a%20b' ],
    [ 'trailing space at full length', substr($ID, 0, 35) . '%20' ],
    [ 'Redis key injection a:b', 'a:b' ],
    [ 'colon at full length', substr($ID, 0, 8) . ':' . substr($ID, 9) ],
    [ 'key prefix', "osago:app:$ID" ],
    [ 'CRLF + command', substr($ID, 0, 30) . '%0D%0AFLUSHALL' ],
    [ 'CRLF at full length', substr($ID, 0, 34) . '%0D%0A' ],
    [ 'quote', substr($ID, 0, 35) . '%22' ],
    [ 'backslash', substr($ID, 0, 35) . '%5C' ],
    [ 'unicode', substr($ID, 0, 34) . '%D0%90' ],
);
# what nginx refuses before the location is reached (no module involved): never 200, no read
my @nginx_bad = ([ '..%2F', '..%2F' ], [ '..%2F..%2Fetc', '..%2F..%2Fetc' ], [ '..', '..' ],
                 [ '%2e%2e', '%2e%2e' ], [ 'NUL', $ID . '%00' ]);
my @bad_latest = ([ 'abc', 'abc' ], [ '-1', '-1' ], [ '1e5', '1e5' ], [ '+1', '%2B1' ],
                  [ '1.5', '1.5' ], [ '0x10', '0x10' ], [ 'space', '%201' ],
                  [ '19 digits', '1' x 19 ], [ '20 digits', '9' x 20 ], [ 'empty', '' ],
                  [ 'digits then junk', '123abc' ], [ 'leading space', '%20123' ]);
my $m2 = poll_metrics($n);
my %st;
$cmds = $r->monitor(sub {
    for my $b (@bad_ids) {
        my ($what, $id) = @$b;
        $res = poll_get($n, undef, key => $ACME, path => "/osago/application/$id");
        $st{"id $what"} = $res;
        $res = poll_get($n, undef, key => $ACME, path => "/osago/application/$id?latest=5");
        $st{"id $what, with latest"} = $res;
    }
    for my $b (@nginx_bad) {
        my ($what, $id) = @$b;
        $st{"nginx $what"} = OsagoTest::raw_http($n->port, "GET /osago/application/$id HTTP/1.1\r\n"
            . "Host: x\r\nX-API-Key: $ACME\r\nConnection: close\r\n\r\n");
    }
    for my $b (@bad_latest) {
        my ($what, $v) = @$b;
        $st{"latest $what"} = poll_get($n, undef, key => $ACME,
                                       path => "/osago/application/$ID?latest=$v");
    }
});
for my $b (@bad_ids) {
    my $what = $b->[0];
    is_problem($st{"id $what"}, 400, 'malformed-id', "malformed id: $what ($b->[1])");
    is_problem($st{"id $what, with latest"}, 400, 'malformed-id', "malformed id: $what, with latest");
}
for my $b (@nginx_bad) {
    my $x = $st{"nginx $b->[0]"};
    ok($x->{status} == 400 || $x->{status} == 404,
       "$b->[1]: refused by nginx before the module ($x->{status})") or diag explain $x;
}
for my $b (@bad_latest) {
    is_problem($st{"latest $b->[0]"}, 400, 'malformed-latest', "latest=$b->[1] ($b->[0])");
}
my @reads = grep { my $c = $_; ($c->[1] // '') =~ /^(flushall|flushdb|keys|scan)$/
                                || grep { /osago:app|\Q$ID\E/ } @$c[ 2 .. $#$c ] } @$cmds;
cmp_ok(scalar(grep { ($_->[1] // '') =~ /^evalsha|^eval$/ } @$cmds), '>=', scalar(@bad_ids),
       "MONITOR was listening (it saw the limiter's scripts)");
is_deeply([ map { join ' ', @$_[ 1 .. $#$_ ] } @reads ], [],
          'MONITOR: no HMGET (nor any other read) for any malformed id or latest');
is(scalar $r->cli('HGET', "osago:app:$ID", 'updated_at'), '1700000000123',
   'and the data is still there (nothing was flushed)');
my $m3 = poll_metrics($n);
is(metric_delta($m2, $m3, 'osago_poll_reads_total'), 0, 'osago_poll_reads_total did not move');

# --- methods, API key -----------------------------------------------------------------------------
for my $m (qw(POST PUT DELETE PATCH)) {
    $res = OsagoTest::raw_http($n->port, "$m /osago/application/$ID HTTP/1.1\r\nHost: x\r\n"
        . "X-API-Key: $ACME\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
        . "Connection: close\r\n\r\n{}");
    is($res->{status}, 405, "$m: 405");
    like(hdr($res, 'content-type') // '', qr{^application/problem\+json}, "$m: problem+json");
    my $p = OsagoTest::problem($res) || {};
    is($p->{status}, 405, "$m: problem status 405");
    is($p->{type}, 'urn:osago:problem:method-not-allowed', "$m: the intake's problem type");
    like(hdr($res, 'allow') // '', qr/^GET,\s*HEAD$/, "$m: Allow: GET, HEAD (RFC 9110 15.5.6)");
}
# A body that has not all arrived would be discarded after the handler returns, in place of the
# watch for the client's leaving (parked, such a request was closed unanswered at
# lingering_timeout): refused instead.
# Whether the body came with the headers or not (it used to be parked when it did).
for my $case ([ 'Content-Length: 10', 'a body of 10 bytes, none sent' ],
              [ 'Transfer-Encoding: chunked', 'a chunked body, none sent' ],
              [ "Content-Length: 3\r\nConnection: close\r\n\r\nabc",
                'a body of 3 bytes sent with the headers', 1 ],
              [ "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n0\r\n\r\n",
                'an empty chunked body sent with the headers', 1 ]) {
    my $tail = $case->[2] ? '' : "Connection: close\r\n\r\n";
    my $t0 = time;
    $res = OsagoTest::raw_http($n->port, "GET /osago/application/$ID?latest=1700000000123 HTTP/1.1\r\n"
        . "Host: x\r\nX-API-Key: $ACME\r\n$case->[0]\r\n$tail", timeout => 5);
    is($res->{status}, 400, "GET with $case->[1]: 400, not parked");
    is((OsagoTest::problem($res) || {})->{type}, 'urn:osago:problem:unexpected-body',
       '  unexpected-body');
    # (a body still owed is awaited by nginx's lingering close before it closes)
    cmp_ok(time - $t0, '<', 1, '  at once, not after the poll timeout') if $case->[2];
}
$res = poll_get($n, $ID);
is_problem($res, 401, 'api-key-missing', 'no X-API-Key');
$res = poll_get($n, $ID, key => OsagoTest::random_key());
is_problem($res, 401, 'api-key-unknown', 'unknown X-API-Key');
$res = poll_get($n, $ID, key => OsagoTest::random_key(), latest => 1700000000123);
is($res->{status}, 401, 'unknown X-API-Key with latest: 401 at once, not parked');

# --- HEAD -----------------------------------------------------------------------------------------
$res = OsagoTest::raw_http($n->port, "HEAD /osago/application/$ID HTTP/1.1\r\nHost: x\r\n"
                           . "X-API-Key: $ACME\r\nConnection: close\r\n\r\n");
is($res->{status}, 200, 'HEAD: 200');
is($res->{content}, '', 'HEAD: no body');
is(hdr($res, 'content-length'), length $DOC, 'HEAD: Content-Length of the document');
is(hdr($res, 'content-type'), 'application/json', 'HEAD: application/json');
is(hdr($res, 'cache-control'), 'no-store', 'HEAD: Cache-Control: no-store');

# --- a read model that is not ours: 503, logged ---------------------------------------------------
my $JUNK = uuid4();
$r->cli('HSET', "osago:app:$JUNK", doc => '{}', owner => 'acme', updated_at => 'soon');
my $WRONG = uuid4();
$r->cli('SET', "osago:app:$WRONG", 'a string, not a hash');
my $EMPTY = uuid4();    # nginx refuses to send a body of 0 bytes: it used to close unanswered
$r->cli('HSET', "osago:app:$EMPTY", doc => '', owner => 'acme', updated_at => 5);
for my $case ([ 'updated_at not a number', $JUNK ], [ 'not a hash (WRONGTYPE)', $WRONG ],
              [ 'an empty doc', $EMPTY ]) {
    $res = poll_get($n, $case->[1], key => $ACME);
    is_problem($res, 503, 'unavailable', "read model $case->[0]", retry_after => [ 1, 1 ]);
}
like($n->error_log, qr/osago poll: unexpected read model for \Q$JUNK\E/,
     'error.log: "osago poll: unexpected read model for {id}"');

# --- parking ----------------------------------------------------------------------------------
# woken by a PUBLISH from redis-cli, within milliseconds (5 s timeout)
my $WID = uuid4();
put_app($r, $WID, owner => 'acme', updated_at => 1000);
my $WNEW = app_doc($WID, status => 'in_progress', updated_at => 1001,
                   insurers => [ { code => 'vsk', status => 'ok', premium => 7000 } ]);
my ($t_pub, $parked_before);
my $m4 = poll_metrics($n);
my @w = ({ path => poll_path($WID, latest => 1000), key => $ACME },
         { path => poll_path($WID, latest => 1000), key => $ACME, method => 'HEAD' });
many(port => $P5, requests => \@w, timeout => 8, actions => [ when_parked($n, 2, sub {
    $parked_before = $_[2];
    put_app($r, $WID, owner => 'acme', updated_at => 1001, doc => $WNEW);
    $t_pub = time;
    $r->cli('PUBLISH', 'osago:app-updates', "$WID 1001");
    return;
}, timeout => 3) ]);
is($parked_before, 2, 'latest = updated_at: both requests parked (osago_poll_parked 2)');
is($w[0]{status}, 200, 'woken by the PUBLISH: 200') or diag explain $w[0];
is($w[0]{content}, $WNEW, 'with the new document');
is(hdr($w[0], 'cache-control'), 'no-store', 'Cache-Control: no-store');
is($w[1]{status}, 200, 'HEAD, woken: 200');
is($w[1]{content}, '', 'HEAD, woken: no body');
my $m5 = poll_metrics($n);
is(metric_delta($m4, $m5, 'osago_poll_answered_total', how => 'woken'), 2, 'woken +2');
my $dr = metric_delta($m4, $m5, 'osago_poll_reads_total');
ok($dr == 3 || $dr == 4, "osago_poll_reads_total +$dr: 2 first reads + one wake read per worker"
                         . ' holding parked requests (1 or 2)');
is(metric_delta($m4, $m5, 'osago_poll_wake_seconds_count'), 2, 'osago_poll_wake_seconds_count +2');
cmp_ok(metric_delta($m4, $m5, 'osago_poll_wake_seconds_sum'), '<', 0.2,
       'osago_poll_wake_seconds_sum: milliseconds');
is(OsagoTest::prom_sum($m5, 'osago_poll_parked'), 0, 'nothing parked any more');

# the wake-up latency, from just before redis-cli PUBLISH to the complete answer
{
    my $lat = $w[0]{done_abs} - $t_pub;
    cmp_ok($lat, '<', 0.5, sprintf 'answered %.1f ms after the PUBLISH (timeout 5 s)', $lat * 1000);
    cmp_ok($w[0]{done_abs} - $w[0]{sent_abs}, '<', 4, 'long before the timeout');
}

# A wake read that fails on a live connection (here: the read model is unusable when the PUBLISH
# comes) is read again a second later, not left until the next change or the timeout: the
# document is mended meanwhile without a PUBLISH, and the parked request gets it.
{
    my $BID = uuid4();
    put_app($r, $BID, owner => 'acme', updated_at => 1000);
    my $mended = app_doc($BID, status => 'in_progress', updated_at => 1002);
    my ($t_broken, $t_mended);
    my @b = ({ path => poll_path($BID, latest => 1000), key => $ACME });
    many(port => $P5, requests => \@b, timeout => 8, actions => [ when_parked($n, 1, sub {
        my ($now) = @_;
        $r->cli('HSET', "osago:app:$BID", 'updated_at', 'soon');
        $r->cli('PUBLISH', 'osago:app-updates', "$BID 1001");
        $t_broken = time;
        return [ $now + 0.3, sub {
            put_app($r, $BID, owner => 'acme', updated_at => 1002, doc => $mended);
            $t_mended = time;
            return;
        } ];
    }, timeout => 3) ]);
    is($b[0]{status}, 200, 'a wake read that failed is read again: 200') or diag explain $b[0];
    is($b[0]{content}, $mended, '  with the mended document (no second PUBLISH)');
    my $after = defined $b[0]{done_abs} && $t_broken ? $b[0]{done_abs} - $t_broken : 99;
    ok($after > 0.5 && $after < 2.5,
       sprintf '  %.2f s after the failed read (a retry a second later, poll timeout 5 s)', $after);
    like($n->error_log, qr/osago poll: cannot read \Q$BID\E for 1 parked request\(s\); read again/,
         '  error.log names the id and the retry');
}

# Several parked at once (2 s timeout), one run:
#   A  latest = updated_at, nothing published          -> 304 after ~2 s
#   B  its document changes silently; a PUBLISH for C  -> not woken, 304 (and no read of B)
#   C  PUBLISH for C, newer                            -> 200, the new document
#   D1 latest 1000, D2 latest 1500; D -> 1500 + PUBLISH -> D1 200, D2 stays parked -> 304
#   E  PUBLISH "E u" and "E u-1" (nothing newer)       -> stays parked -> 304
my %id = map { $_ => uuid4() } qw(A B C D E);
put_app($r, $id{$_}, owner => 'acme', updated_at => 2000) for qw(A B C E);
put_app($r, $id{D}, owner => 'acme', updated_at => 1000);
my %doc;
my @q = (
    { tag => 'A',  path => poll_path($id{A}, latest => 2000), key => $ACME },
    { tag => 'B',  path => poll_path($id{B}, latest => 2000), key => $ACME },
    { tag => 'C',  path => poll_path($id{C}, latest => 2000), key => $ACME },
    { tag => 'D1', path => poll_path($id{D}, latest => 1000), key => $ACME },
    { tag => 'D2', path => poll_path($id{D}, latest => 1500), key => $ACME },
    { tag => 'E',  path => poll_path($id{E}, latest => 2000), key => $ACME },
);
my %q = map { $_->{tag} => $_ } @q;
my $m6 = poll_metrics($n);
my ($parked6, $still);
my %pub_at;
$cmds = $r->monitor(sub {
    many(port => $n->port, requests => \@q, timeout => 6, actions => [ when_parked($n, 6, sub {
        my ($now) = @_;
        $parked6 = $_[2];
        return ([ $now + 0.3, sub {
            $doc{B} = put_app($r, $id{B}, owner => 'acme', updated_at => 2500);
            $doc{C} = put_app($r, $id{C}, owner => 'acme', updated_at => 2600);
            $pub_at{C} = time;
            publish($r, $id{C}, 2600);
            return;
        } ], [ $now + 0.4, sub {
            $doc{D} = put_app($r, $id{D}, owner => 'acme', updated_at => 1500);
            $pub_at{D} = time;
            publish($r, $id{D}, 1500);
            publish($r, $id{E}, 2000);
            publish($r, $id{E}, 1999);
            return;
        } ], [ $now + 0.8, sub { $still = parked($n); return } ]);
    }, timeout => 1.5) ]);
});
is($parked6, 6, 'six requests parked');
is($still, 4, 'after the publishes, four stay parked (A, B, D2, E)');
for my $t (qw(A B D2 E)) {
    my $x = $q{$t};
    is($x->{status}, 304, "$t: 304 at the timeout") or diag explain $x;
    is($x->{content}, '', "$t: no body");
    ok(!defined hdr($x, 'content-type'), "$t: no Content-Type");
    my $ratio = (($x->{done} // 99) - ($x->{sent} // 0)) / 2.0;
    ok($ratio > 0.95 && $ratio < 1.35,
       sprintf "$t: after the configured 2 s (%.3f s, ratio %.2f)", $ratio * 2, $ratio);
}
is($q{C}{status}, 200, 'C: woken, 200');
is($q{C}{content}, $doc{C}, 'C: the new document');
cmp_ok($q{C}{done_abs} - $pub_at{C}, '<', 0.3, sprintf 'C: %.1f ms after its PUBLISH',
       ($q{C}{done_abs} - $pub_at{C}) * 1000);
is($q{D1}{status}, 200, 'D1 (latest 1000): woken by D 1500, 200');
is($q{D1}{content}, $doc{D}, 'D1: the new document');
my @b_reads = hmgets_of($cmds, $id{B});
is(scalar @b_reads, 1, 'B: read once (its own first read), the PUBLISH for C read nothing of B');
my @c_reads = hmgets_of($cmds, $id{C});
cmp_ok(scalar @c_reads, '>=', 2, 'C: its first read and a wake read');
cmp_ok(scalar @c_reads, '<=', 3, 'C: at most one wake read per worker');
my $m7 = poll_metrics($n);
is(metric_delta($m6, $m7, 'osago_poll_answered_total', how => 'timed_out'), 4, 'timed_out +4');
is(metric_delta($m6, $m7, 'osago_poll_answered_total', how => 'woken'), 2, 'woken +2');
is(OsagoTest::prom_sum($m7, 'osago_poll_parked'), 0, 'osago_poll_parked back to 0');
is_deeply([ OsagoTest::prom_invalid_lines(OsagoTest::http(GET => $n->url('/metrics'))->{content}) ],
          [], 'the metrics are valid Prometheus text');
is(OsagoTest::prom_sum($m7, 'osago_poll_subscribed'), 2, 'osago_poll_subscribed 1 for each worker');

diag sprintf 'edge part: %.1f s', time - $T0;

# --- end to end with the real worker --------------------------------------------------------------
{
    require OsagoStack;
    OsagoStack::need_bins(qw(devbroker insurer-sim osago-worker));
    my @CODES = qw(alfa ingos reso vsk);
    my $pg  = OsagoStack::Postgres->new;
    my $kb  = OsagoStack::Devbroker->new;
    my $sim = OsagoStack::InsurerSim->new(insurers => \@CODES, latency => '300-900');
    my $wk  = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $sim,
                                      migrate => 1, name => 'poll-e2e');
    ok(OsagoStack::wait_until(sub { $wk->readyz == 200 }, 15, 0.1), 'worker ready');
    my $me0 = poll_metrics($n);
    my $sub = submit($n, key => $ACME, idem => idem_key('poll-e2e'));
    is($sub->{status}, 202, 'application accepted by the real intake') or diag explain $sub;
    my $app = (jdec($sub->{content}) || {})->{id} // 'none';

    $res = poll_get($n, $app, key => $ACME);
    is($res->{status}, 200, 'GET without latest: 200');
    my $d = jdec($res->{content}) || {};
    is($d->{id}, $app, 'the application');
    like($d->{status} // '', qr/^(accepted|in_progress)$/, "status $d->{status}");
    my @seen = ([ $d->{status}, $d->{updated_at}, $res->{elapsed}, 200 ]);
    my $latest = $d->{updated_at};
    my $final = $res->{content};
    my $deadline = time + 30;
    while (($d->{status} // '') ne 'completed' && time < $deadline) {
        $res = poll_get($n, $app, key => $ACME, latest => $latest, port => $P5);
        push @seen, [ undef, undef, $res->{elapsed}, $res->{status} ];
        next if $res->{status} == 304;
        last unless $res->{status} == 200;
        $d = jdec($res->{content}) || {};
        @{ $seen[-1] }[ 0, 1 ] = ($d->{status}, $d->{updated_at});
        $latest = $d->{updated_at};
        $final = $res->{content};
    }
    diag 'seen: ' . join ' -> ', map { sprintf '%s %s %s (%.3f s)', $_->[3], $_->[0] // '-',
                                          $_->[1] // '-', $_->[2] } @seen;
    my @st = map { $_->[0] } grep { $_->[3] == 200 } @seen;
    my %rank = (accepted => 0, in_progress => 1, completed => 2);
    ok(!grep({ !defined $_ || !exists $rank{$_} } @st), 'every answer is a document with a status');
    ok(!grep({ $rank{ $st[$_] } < $rank{ $st[ $_ - 1 ] } } 1 .. $#st),
       'statuses never go back: ' . join(' ', @st));
    my @u = map { $_->[1] } grep { $_->[3] == 200 } @seen;
    ok(!grep({ $u[$_] <= $u[ $_ - 1 ] } 1 .. $#u), 'each 200 is newer than the previous (updated_at)');
    is($st[-1], 'completed', 'the last document says completed');
    ok(scalar(grep { $_ eq 'in_progress' } @st) >= 1, 'in_progress was seen on the way');
    cmp_ok(scalar(@st), '>=', 3, scalar(@st) . ' documents in all (at least accepted/in_progress,'
                                 . ' a progress, completed)');
    ok(!grep({ $_->[3] != 200 && $_->[3] != 304 } @seen), 'only 200s and 304s');
    my @ins = @{ $d->{insurers} || [] };
    is(join(',', map { $_->{code} // '' } @ins), join(',', @CODES), 'the final document has every insurer');
    ok(!grep({ ($_->{status} // '') ne 'ok' || !defined $_->{premium_rub} } @ins),
       'each with status ok and a premium') or diag $final;
    is($final, OsagoStack::read_model($r, $app)->{doc_raw}, 'the last answer is the stored read model');
    my $me1 = poll_metrics($n);
    cmp_ok(metric_delta($me0, $me1, 'osago_poll_answered_total', how => 'woken'), '>=', 1,
           'at least one change was delivered to a parked request (woken)');
    my @parked_long = grep { $_->[3] == 200 && $_->[2] > 0.05 } @seen[ 1 .. $#seen ];
    ok(@parked_long, 'at least one long-poll waited for the worker and then got its change');
    $res = poll_get($n, $app, key => $ACME, latest => $latest, port => $P5);
    ok($res->{status} == 200 && $res->{content} eq $final && $res->{elapsed} < 0.5,
       'polling again with the final updated_at: the completed document at once');
    $res = poll_get($n, $app, key => $BETA, latest => $latest);
    is($res->{status}, 404, "another partner cannot see it");
    $wk->stop;
}

diag sprintf 'took %.1f s', time - $T0;
done_testing;
