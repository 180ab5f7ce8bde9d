#!/usr/bin/perl
# A retry after UTC midnight. A client's application accepted yesterday with start_date =
# yesterday (the first day it may start) is retried today with the same Idempotency-Key: the
# body is now outside today's start_date window, but it is the very payload the key holds, so
# the answer is the original 202 (Idempotent-Replayed), as at any other time of day. The same
# body under a key that holds nothing, or holds another payload, is not a replay: 400 and 422.
# A start_date past the window is its 400 under any key.
# "Yesterday's" record is written into Redis as the intake writes it (the fingerprint is
# sha256 of the canonical payload, which only differs from today's in the date).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Digest::SHA qw(sha256_hex);
use JSON::PP ();
use OsagoTest;
use OsagoIntake qw(:all);

my $r = OsagoTest::Redis->new;
my $n = OsagoTest::Nginx->new(redis => $r, workers => 1, http => <<'HTTP');
    osago_redis_server %%REDIS%%;
    server {
        listen 127.0.0.1:%%PORT%%;
        location = /osago/application { osago_limit on; osago_intake; }
        location = /metrics { osago_metrics; }
    }
HTTP
my $acme = OsagoTest::add_partner($r, name => 'acme', rate => 100, burst => 100);
my $json = JSON::PP->new->utf8;
my ($today, $yesterday) = (date_from_today(0), date_from_today(-1));

# today's canonical form of the application, from an accepted one
my $res = submit($n, key => $acme, idem => idem_key('today'), body => app_json(start_date => $today));
is($res->{status}, 202, "an application starting today ($today) is accepted") or diag explain $res;
my $canonical_today = footprint($r)->{entries}[0]{fields}{payload} // '';
(my $canonical_yday = $canonical_today) =~ s/"start_date":"\Q$today\E"/"start_date":"$yesterday"/;
isnt($canonical_yday, $canonical_today, "(yesterday's canonical payload: start_date $yesterday)");

# yesterday's acceptance, as the intake script records it
my $K = idem_key('yday');
my $old_id = '0190a6e4-1c2b-7d3e-8f40-123456789abc';
my $old_body = qq({"id":"$old_id","status":"accepted","created_at":"${yesterday}T23:59:58.120Z",)
             . qq("links":{"self":"/osago/application/$old_id"}});
resp($r, 'HSET', "osago:idem:acme:$K", 'app_id', $old_id, 'fingerprint', sha256_hex($canonical_yday),
     'status', '202', 'body', $old_body);
my $m0 = metrics($n);
my $xlen0 = footprint($r)->{xlen};

my $body_yday = app_json(start_date => $yesterday);
$res = submit($n, key => $acme, idem => $K, body => $body_yday);
is($res->{status}, 202, 'the retry after midnight: the original 202') or diag explain $res;
is(hdr($res, 'idempotent-replayed'), 'true', '  Idempotent-Replayed: true');
is($res->{content}, $old_body, '  the original body, byte for byte');
is(hdr($res, 'location'), "/osago/application/$old_id", '  the original Location');

$res = submit($n, key => $acme, idem => idem_key('new'), body => $body_yday);
is_problem($res, 400, 'invalid-field', 'the same body under a new key: not a replay',
           pointer => '/start_date');
like((OsagoTest::problem($res) || {})->{detail} // '', qr/from today \(\Q$today\E\)/,
     '  the detail names today\'s window');

$res = submit($n, key => $acme, idem => $K,
              body => app_json(start_date => $yesterday, vehicle => { power_hp => 151 }));
is_problem($res, 422, 'idempotency-key-reused', 'another payload under the key: 422 as on any day');

$res = submit($n, key => $acme, idem => $K,
              body => app_json(start_date => $yesterday, vehicle => { power_hp => 0 }));
is_problem($res, 400, 'invalid-field', 'a body with another error besides the date: 400, not a'
           . ' replay (the first error in the document, as on any day)', pointer => '/start_date');

# a date past today's window never was inside it: the key holds yesterday's payload, but no
# replay is looked for (it used to be, and answered 422)
$res = submit($n, key => $acme, idem => $K, body => app_json(start_date => date_from_today(100)));
is_problem($res, 400, 'invalid-field', 'a start_date past the window under the key: its 400, not a'
           . ' 422', pointer => '/start_date');

my $f = footprint($r);
is($f->{xlen}, $xlen0, 'no stream entry for any of them');
is(scalar(grep { !/:\Q$K\E$/ } @{ $f->{idem} }), 1, 'no idempotency record but today\'s and yesterday\'s');
is(resp($r, 'HGET', "osago:idem:acme:$K", 'fingerprint'), sha256_hex($canonical_yday),
   'yesterday\'s record unchanged');

my $m1 = metrics($n);
is(metric_delta($m0, $m1, 'osago_intake_requests_total', result => 'replayed'), 1,
   'osago_intake_requests_total{result=replayed} +1');
is(metric_delta($m0, $m1, 'osago_intake_rejected_total', reason => 'invalid_body'), 3,
   'osago_intake_rejected_total{reason=invalid_body} +3');
is(metric_delta($m0, $m1, 'osago_intake_rejected_total', reason => 'idempotency_key_reused'), 1,
   'osago_intake_rejected_total{reason=idempotency_key_reused} +1');
unlike($n->error_log, qr/\[(alert|emerg|crit)\]|exited on signal/, 'no alerts in error.log');
done_testing;
