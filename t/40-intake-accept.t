#!/usr/bin/perl
# Idempotent intake, the happy paths: 202 and its body, what lands in Redis (one stream entry,
# the read model, the idempotency record, TTLs), replays byte for byte, 422 on a reused key,
# keys scoped per partner, expiry of the idempotency record, traceparent, metrics.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Digest::SHA qw(sha256_hex);
use JSON::PP ();
use Time::HiRes qw(time sleep);
use Time::Local qw(timegm);
use OsagoTest;
use OsagoIntake qw(:all);

my $r = OsagoTest::Redis->new;
my $n = OsagoTest::Nginx->new(redis => $r, workers => 2, http => <<'HTTP');
    osago_redis_server %%REDIS%%;
    osago_partner_cache_ttl 1s;
    server {
        listen 127.0.0.1:%%PORT%%;
        location = /osago/application { osago_limit on; osago_intake; }
        location = /metrics { osago_metrics; }
    }
    server {
        listen 127.0.0.1:%%PORT2%%;
        location = /osago/application {
            osago_limit on;
            osago_intake;
            osago_idempotency_ttl 2s;
        }
    }
HTTP

my $acme = OsagoTest::add_partner($r, name => 'acme', rate => 100, burst => 100);
my $beta = OsagoTest::add_partner($r, name => 'beta', rate => 100, burst => 100);
my $url2 = 'http://127.0.0.1:' . $n->port2 . '/osago/application';

my $json = JSON::PP->new->utf8;
sub jdec { my $v = eval { $json->decode($_[0]) }; $v }
sub iso_ms {
    my ($s) = @_;
    return undef unless ($s // '') =~ /^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)\.(\d{3})Z$/;
    return timegm($6, $5, $4, $3, $2 - 1, $1) * 1000 + $7;
}
sub uuid_ms { my ($id) = @_; $id =~ s/-//g; no warnings 'portable'; hex(substr($id, 0, 12)) }

# What the clients saw, to hold the metrics to: every request here reaches the body parser.
my %seen = (accepted => 0, replayed => 0, reused => 0, other => 0);
my $parsed = 0;
sub post {
    my $res = submit($n, @_);
    $parsed++;
    my $type = (OsagoTest::problem($res) || {})->{type} // '';
    $seen{ $res->{status} == 202 ? (hdr($res, 'idempotent-replayed') ? 'replayed' : 'accepted')
         : $type eq 'urn:osago:problem:idempotency-key-reused' ? 'reused' : 'other' }++;
    return $res;
}

my $m0 = metrics($n);
is_clean($r, 'before anything');

# --- acceptance ---------------------------------------------------------------------------------
my $K1   = idem_key('accept');
my $body = app_json();
my $t0   = time;
my $res  = post(key => $acme, idem => $K1, body => $body);
is($res->{status}, 202, '202 Accepted') or diag explain $res;
like(hdr($res, 'content-type') // '', qr{^application/json\b}, 'Content-Type application/json');
my $doc = jdec($res->{content}) || {};
is_deeply([ sort keys %$doc ], [qw(created_at id links status)],
          'body has exactly id, status, created_at, links') or diag $res->{content};
my $id = $doc->{id} // '';
like($id, uuid7_re(), "id is a UUIDv7 (version 7, variant 10xx): $id");
is($doc->{status}, 'accepted', 'status accepted');
like($doc->{created_at} // '', qr/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/,
     'created_at is ISO-8601 UTC with milliseconds');
my $created_ms = iso_ms($doc->{created_at}) // 0;
cmp_ok(abs($created_ms / 1000 - $t0), '<', 5, 'created_at is now');
cmp_ok(abs(uuid_ms($id) - $created_ms), '<=', 1000, 'the UUIDv7 timestamp is the creation time');
is_deeply($doc->{links}, { self => "/osago/application/$id" }, 'links.self');
is(hdr($res, 'location'), "/osago/application/$id", 'Location header');
ok(defined hdr($res, 'ratelimit') && defined hdr($res, 'ratelimit-policy'),
   'RateLimit and RateLimit-Policy headers');
ok(!defined hdr($res, 'idempotent-replayed'), 'first answer is not marked as replayed');
my $original = $res;

# --- Redis after acceptance ---------------------------------------------------------------------
my $f = footprint($r);
is($f->{xlen}, 1, 'exactly one osago:intake stream entry');
my $e = $f->{entries}[0] || { fields => {}, order => [] };
is_deeply([ sort @{ $e->{order} } ], [qw(app_id partner payload trace)],
          'entry fields: app_id, partner, payload, trace') or diag explain $e;
is($e->{fields}{app_id}, $id, 'entry app_id');
is($e->{fields}{partner}, 'acme', 'entry partner is the partner name');
my $payload = $e->{fields}{payload} // '';
is_deeply(jdec($payload), jdec($body), 'entry payload is the application (as JSON)')
    or diag $payload;
like($e->{fields}{trace} // '', trace_re(), 'entry trace is a W3C traceparent');
unlike($e->{fields}{trace} // '', qr/^00-0{32}-/, 'trace id is not all zeros');
like($n->error_log, qr/\Q$id\E/, 'the acceptance is logged with the application id');
my ($trace_id) = ($e->{fields}{trace} // '') =~ trace_re();
$trace_id //= 'no trace id';
like($n->error_log, qr/\Q$trace_id\E/, 'and with the trace id');

is_deeply($f->{apps}, ["osago:app:$id"], 'one read model osago:app:ID');
my $app = hgetall($r, "osago:app:$id");
is_deeply([ sort keys %$app ], [qw(doc owner updated_at)], 'read model fields: doc, owner, updated_at');
is($app->{owner}, 'acme', 'owner is the partner');
my $rm = jdec($app->{doc} // '') || {};
is($rm->{id}, $id, 'doc.id');
is($rm->{status}, 'accepted', 'doc.status accepted');
is($rm->{created_at}, $doc->{created_at}, 'doc.created_at as in the 202');
like($rm->{updated_at} // '', qr/^\d{13}$/, 'doc.updated_at is an integer of milliseconds');
ok(!ref $rm->{updated_at} && ($app->{doc} // '') =~ /"updated_at":\d+[,}]/,
   'doc.updated_at is a JSON number') or diag $app->{doc};
is($app->{updated_at}, $rm->{updated_at}, 'hash updated_at matches doc.updated_at');
cmp_ok(abs(($rm->{updated_at} // 0) - $created_ms), '<=', 1000, 'updated_at ~ created_at');
is_deeply($rm->{insurers}, [], 'doc.insurers is []');
my $ttl = resp($r, 'TTL', "osago:app:$id");
ok($ttl > 7 * 86400 - 60 && $ttl <= 7 * 86400, "read model TTL about 7 days ($ttl)");

is_deeply($f->{idem}, ["osago:idem:acme:$K1"], 'idempotency record osago:idem:acme:KEY');
my $idem = hgetall($r, "osago:idem:acme:$K1");
is_deeply([ sort keys %$idem ], [qw(app_id body fingerprint status)],
          'idempotency record: app_id, fingerprint, status, body');
is($idem->{app_id}, $id, 'idem app_id');
like($idem->{fingerprint} // '', qr/^[0-9a-f]{64}$/, 'fingerprint is 64 hex');
is($idem->{fingerprint}, sha256_hex($payload), 'fingerprint = sha256 of the stored payload');
is($idem->{status}, '202', 'idem status 202');
is($idem->{body}, $original->{content}, 'idem body is the 202 body, byte for byte');
$ttl = resp($r, 'TTL', "osago:idem:acme:$K1");
ok($ttl > 86400 - 60 && $ttl <= 86400, "idempotency record TTL about 24 h ($ttl)");

# --- replay -------------------------------------------------------------------------------------
for my $i (1 .. 2) {
    $res = post(key => $acme, idem => $K1, body => $body);
    subtest "replay $i: same key, same payload" => sub {
        is($res->{status}, 202, 'the original status') or diag explain $res;
        is($res->{content}, $original->{content}, 'byte-identical body');
        is(hdr($res, 'idempotent-replayed'), 'true', 'Idempotent-Replayed: true');
        is(hdr($res, 'location'), "/osago/application/$id", 'same Location');
        like(hdr($res, 'content-type') // '', qr{^application/json\b}, 'application/json');
        ok(defined hdr($res, 'ratelimit'), 'RateLimit header');
    };
}
is(footprint($r)->{xlen}, 1, 'replays add no stream entry');

# The fingerprint is over the canonical form: the same application with other whitespace and
# member order is the same payload (needs the real validator's canonicalisation).
my $pretty = JSON::PP->new->utf8->pretty->encode(jdec($body));
$pretty =~ s/"vehicle"/ "vehicle" /;
my $reordered = '{"start_date":"' . app_data()->{start_date} . '","period_months":12,'
    . '"drivers":[{"license_issued_date":"2005-06-01","birth_date":"1985-04-12"}],'
    . '"owner":{"birth_date":"1985-04-12","region_code":"77"},'
    . '"vehicle":{"vin":"XTA21099012345678","year":2018,"power_hp":150,"category":"B"}}';
is_deeply(jdec($reordered), jdec($body), '(the reordered body is the same application)');
for ([ 'pretty-printed' => $pretty ], [ 'members reordered' => $reordered ]) {
    my ($what, $b) = @$_;
    $res = post(key => $acme, idem => $K1, body => $b);
    ok($res->{status} == 202 && (hdr($res, 'idempotent-replayed') // '') eq 'true'
       && $res->{content} eq $original->{content},
       "same application $what: a replay (fingerprint of the canonical form)")
        or diag "$res->{status} $res->{content}";
}
unlike($payload, qr/^\s|\s$|[{}\[\]:,]\s|\s[{}\[\]:,]/, 'the stored payload is compact JSON');
$res = post(key => $acme, idem => $K1, body => $payload);
ok($res->{status} == 202 && (hdr($res, 'idempotent-replayed') // '') eq 'true',
   'the stored canonical payload itself, sent as the body: a replay (canonical form is stable)')
    or diag "$res->{status} $res->{content}";
is(footprint($r)->{xlen}, 1, 'still one stream entry');

# --- same key, different payload: 422 --------------------------------------------------------
my $other = app_json(vehicle => { power_hp => 151 });
$res = post(key => $acme, idem => $K1, body => $other);
is_problem($res, 422, 'idempotency-key-reused', 'same key, different payload');
like($res->{reason} // '', qr/^Unprocessable/, 'reason phrase for 422');
ok(!defined hdr($res, 'idempotent-replayed'), '422 is not a replay');
$f = footprint($r);
is($f->{xlen}, 1, '422: no stream entry');
is(scalar @{ $f->{apps} }, 1, '422: no read model');
is_deeply(hgetall($r, "osago:idem:acme:$K1"), $idem, '422: the idempotency record is unchanged');
$res = post(key => $acme, idem => $K1, body => $body);
is($res->{content}, $original->{content}, 'the original payload still replays after the 422');

# --- the same key from another partner: another application ----------------------------------
$res = post(key => $beta, idem => $K1, body => $body);
is($res->{status}, 202, 'same key, partner beta: 202') or diag explain $res;
ok(!defined hdr($res, 'idempotent-replayed'), 'not a replay of acme\'s application');
my $bid = (jdec($res->{content}) || {})->{id} // '';
like($bid, uuid7_re(), 'beta gets a UUIDv7');
isnt($bid, $id, 'a different application id');
$f = footprint($r);
is($f->{xlen}, 2, 'two stream entries');
is($f->{entries}[1]{fields}{partner}, 'beta', 'second entry belongs to beta');
is($f->{entries}[1]{fields}{app_id}, $bid, 'with beta\'s id');
is(hgetall($r, "osago:app:$bid")->{owner}, 'beta', 'read model owner beta');
is(hgetall($r, "osago:idem:beta:$K1")->{app_id}, $bid, 'osago:idem:beta:KEY');
is(hgetall($r, "osago:idem:acme:$K1")->{app_id}, $id, 'acme\'s record untouched');
$res = post(key => $beta, idem => $K1, body => $other);
is_problem($res, 422, 'idempotency-key-reused', 'beta reusing its own key with another payload');

# --- plates: Latin look-alike letters are the same plate as the Cyrillic ones --------------------
{
    my $KP = idem_key('plate');
    my $cyr = app_json(vehicle => { vin => undef, plate => "\x{410}123\x{412}\x{421}77" });
    my $lat = app_json(vehicle => { vin => undef, plate => 'A123BC77' });
    my $p1 = post(key => $acme, idem => $KP, body => $cyr);
    is($p1->{status}, 202, 'plate in Cyrillic: 202');
    my $p2 = post(key => $acme, idem => $KP, body => $lat);
    ok($p2->{status} == 202 && (hdr($p2, 'idempotent-replayed') // '') eq 'true'
       && $p2->{content} eq $p1->{content},
       'the same plate in Latin look-alike letters: the same payload (a replay)')
        or diag "$p2->{status} $p2->{content}";
    my $pid = (jdec($p1->{content}) || {})->{id} // '';
    my ($pe) = grep { ($_->{fields}{app_id} // '') eq $pid } @{ footprint($r)->{entries} };
    is((jdec($pe->{fields}{payload} // '') || {})->{vehicle}{plate}, "\x{410}123\x{412}\x{421}77",
       'the stream payload carries the plate in Cyrillic');
}

# --- traceparent -------------------------------------------------------------------------------
my $tid = '4bf92f3577b34da6a3ce929d0e0e4736';
$res = post(key => $acme, idem => idem_key('trace'),
            body => app_json(vehicle => { power_hp => 120 }),
            headers => { traceparent => "00-$tid-00f067aa0ba902b7-01" });
is($res->{status}, 202, 'with a traceparent: 202');
my $tapp = (jdec($res->{content}) || {})->{id} // '';
my ($te) = grep { ($_->{fields}{app_id} // '') eq $tapp } @{ footprint($r)->{entries} };
my ($got_tid, $got_span) = (($te->{fields}{trace} // '') =~ trace_re());
is($got_tid, $tid, 'the stream entry carries the caller\'s trace id');
like($got_span // '', qr/^(?!0{16})[0-9a-f]{16}$/, 'and a (non-zero) span id');
like($n->error_log, qr/$tid/, 'the trace id is logged');

my %bad_tp = (
    'all-zero trace id' => '00-' . ('0' x 32) . '-00f067aa0ba902b7-01',
    'upper-case hex'    => '00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01',
    'too short'         => '00-4bf92f3577b34da6-00f067aa0ba902b7-01',
    'garbage'           => 'hello',
    'version ff'        => "ff-$tid-00f067aa0ba902b7-01",
);
for my $what (sort keys %bad_tp) {
    $res = post(key => $acme, idem => idem_key('badtp'),
                body => app_json(vehicle => { power_hp => 100 + length $what }),
                headers => { traceparent => $bad_tp{$what} });
    is($res->{status}, 202, "traceparent $what: still accepted");
    my $aid = (jdec($res->{content}) || {})->{id} // '';
    my ($x) = grep { ($_->{fields}{app_id} // '') eq $aid } @{ footprint($r)->{entries} };
    my ($t) = (($x->{fields}{trace} // '') =~ trace_re());
    ok(defined $t && $t !~ /^0+$/ && $t ne $tid && lc($bad_tp{$what}) !~ /\Q$t\E/,
       "traceparent $what: a new trace id") or diag explain $x;
}
# two traceparents, each valid: W3C Trace Context takes that as none (the first used to win)
my $tid2 = 'aaf92f3577b34da6a3ce929d0e0e4736';
$res = OsagoTest::raw_http($n->port, post_request(key => $acme, idem => idem_key('twotp'),
    body => app_json(vehicle => { power_hp => 99 }),
    headers => { traceparent => "00-$tid-00f067aa0ba902b7-01",
                 Traceparent => "00-$tid2-00f067aa0ba902b7-01" }));
is($res->{status}, 202, 'two traceparent headers: still accepted');
$parsed++;
$seen{accepted}++ if $res->{status} == 202;
{
    my $aid = (jdec($res->{content}) || {})->{id} // '';
    my ($x) = grep { ($_->{fields}{app_id} // '') eq $aid } @{ footprint($r)->{entries} };
    my ($t) = (($x->{fields}{trace} // '') =~ trace_re());
    ok(defined $t && $t ne $tid && $t ne $tid2, '  a new trace id, neither of theirs')
        or diag explain $x;
}

# --- expiry of the idempotency record (osago_idempotency_ttl 2s) -------------------------------
my $K2 = idem_key('expire');
my $b2 = app_json(vehicle => { power_hp => 90 });
my $e1 = post(url => $url2, key => $acme, idem => $K2, body => $b2);
is($e1->{status}, 202, 'ttl 2s: accepted');
my $eid1 = (jdec($e1->{content}) || {})->{id} // '';
$ttl = resp($r, 'TTL', "osago:idem:acme:$K2");
ok($ttl >= 1 && $ttl <= 2, "idempotency record TTL is the configured 2 s ($ttl)");
my $e2 = post(url => $url2, key => $acme, idem => $K2, body => $b2);
is(hdr($e2, 'idempotent-replayed'), 'true', 'replayed within the TTL');
is($e2->{content}, $e1->{content}, 'same body');
sleep 3;
my $e3 = post(url => $url2, key => $acme, idem => $K2, body => $b2);
is($e3->{status}, 202, 'after 3 s the same key is accepted anew');
ok(!defined hdr($e3, 'idempotent-replayed'), 'not a replay');
my $eid3 = (jdec($e3->{content}) || {})->{id} // '';
like($eid3, uuid7_re(), 'new id is a UUIDv7');
isnt($eid3, $eid1, 'a new application id');
is(resp($r, 'EXISTS', "osago:app:$eid1"), 1, 'the first application\'s read model stays (7 days)');
my $post_exp = post(url => $url2, key => $acme, idem => $K2, body => app_json(vehicle => { power_hp => 91 }));
is_problem($post_exp, 422, 'idempotency-key-reused', 'the renewed key is bound to its payload again');

# --- the whole stream ----------------------------------------------------------------------------
$f = footprint($r);
my $accepted = 2 + 1 + 1 + (keys %bad_tp) + 1 + 2;    # acme, beta, plate, traceparent, bad traceparents, two traceparents, expiry x2
is($seen{accepted}, $accepted, "$accepted requests answered 202 without Idempotent-Replayed");
is($f->{xlen}, $accepted, "stream: one entry per accepted application ($accepted)");
my %ids;
$ids{ $_->{fields}{app_id} // '' }++ for @{ $f->{entries} };
is(scalar(grep { $_ == 1 } values %ids), $accepted, 'every entry a different application');
is(scalar @{ $f->{apps} }, $accepted, 'one read model per application');

# --- metrics -------------------------------------------------------------------------------------
my $m1 = metrics($n);
# counted against what the clients saw (the expected statuses are asserted above)
is($seen{other}, 0, 'every answer was 202, a replay or 422') or diag explain \%seen;
is(metric_delta($m0, $m1, 'osago_intake_requests_total', result => 'accepted'), $seen{accepted},
   "osago_intake_requests_total{result=accepted} +$seen{accepted}");
is(metric_delta($m0, $m1, 'osago_intake_requests_total', result => 'replayed'), $seen{replayed},
   "osago_intake_requests_total{result=replayed} +$seen{replayed}");
is(metric_delta($m0, $m1, 'osago_intake_rejected_total', reason => 'idempotency_key_reused'),
   $seen{reused}, "osago_intake_rejected_total{reason=idempotency_key_reused} +$seen{reused}");
is(metric_delta($m0, $m1, 'osago_intake_rejected_total'), $seen{reused}, 'no other rejections');
is(metric_delta($m0, $m1, 'osago_intake_parse_seconds_count'), $parsed,
   "osago_intake_parse_seconds_count +$parsed (every body parsed once)");
is(metric_delta($m0, $m1, 'osago_intake_parse_seconds_bucket', le => '+Inf'), $parsed,
   'parse histogram: +Inf bucket = count');
cmp_ok(metric_delta($m0, $m1, 'osago_intake_parse_seconds_sum'), '>', 0, 'parse time sum grew');
cmp_ok(metric_delta($m0, $m1, 'osago_intake_parse_seconds_sum'), '<', $parsed * 0.01,
       'and stays small (< 10 ms a body)');
my @le = sort { $a <=> $b } map { /le="([^"]+)"/ && $1 ne '+Inf' ? $1 : () }
         grep { /^osago_intake_parse_seconds_bucket/ } keys %$m1;
my @cum = map { $m1->{qq{osago_intake_parse_seconds_bucket{le="$_"}}} } @le;
ok(@le >= 3 && !grep({ $cum[$_] < $cum[$_ - 1] } 1 .. $#cum), 'buckets are cumulative')
    or diag explain \@cum;
my $mt = OsagoTest::http(GET => $n->url('/metrics'))->{content};
is_deeply([ OsagoTest::prom_invalid_lines($mt) ], [], 'metrics text is valid exposition');

unlike($n->error_log, qr/\[(alert|emerg|crit)\]|segfault|exited on signal/, 'no alerts in error.log')
    or diag join "\n", grep { /\[(alert|emerg|crit)\]|signal/ } split /\n/, $n->error_log;

done_testing;
