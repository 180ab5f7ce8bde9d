#!/usr/bin/perl
# A failover behind a moved address (a virtual IP, a proxy): the primary the edge is connected to
# becomes a replica of the new one, and its address now leads to the new primary. The edge's open
# connection still reaches the old node, which answers every write READONLY; the edge drops that
# connection and the next one reaches the new primary: intake works again within a second or so.
# The moving address is a small TCP proxy here (OsagoStack::TcpProxy), which the test re-points.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes qw(time sleep);
use OsagoTest;
use OsagoIntake qw(:all);
use OsagoStack;

my $T0 = time;
my $old = OsagoTest::Redis->new;
my $new = OsagoTest::Redis->new;
OsagoStack::replicate($new, $old);

# the moving address: a proxy whose new connections go where it is pointed
my $vip = OsagoStack::TcpProxy->new(to => $old->port);
my $vip_port = $vip->port;

my $n = OsagoTest::Nginx->new(redis => "127.0.0.1:$vip_port", workers => 1, http => <<'HTTP');
    osago_redis_server %%REDIS%%;
    osago_redis_timeout 500ms;
    server {
        listen 127.0.0.1:%%PORT%%;
        location = /osago/application { osago_limit on; osago_intake; }
    }
HTTP

my $key = OsagoTest::add_partner($old, name => 'acme', rate => 1000, burst => 1000);
my $seq = 0;
sub post { submit($n, key => $key, idem => 'failover-' . ++$seq, timeout => 5) }

is(post()->{status}, 202, 'accepted through the address, by the primary');
ok(OsagoTest::wait_for(sub { ($new->cli('DBSIZE') // 0) >= 3 }, 15), 'the standby has the data');

# failover: the standby becomes the primary, the old primary its replica, the address moves
is($new->cli('REPLICAOF', 'NO', 'ONE'), 'OK', 'the standby is promoted');
is($old->cli('REPLICAOF', '127.0.0.1', $new->port), 'OK', 'the old primary is demoted');
$vip->to($new->port);

my $t = time;
my ($ok, @statuses);
while (time - $t < 6) {
    my $res = post();
    push @statuses, $res->{status};
    if ($res->{status} == 202) { $ok = 1; last }
    sleep 0.2;
}
ok($ok, sprintf 'intake accepted again %.1f s after the failover (answers: %s)', time - $t,
   join ' ', @statuses);
like($n->error_log, qr/dropping the connection to .*read-only replica/,
     'the edge said why it dropped the connection');
my $last = "failover-$seq";
ok(scalar $new->cli('EXISTS', "osago:idem:acme:$last"), 'the application is in the new primary');

$vip->stop;
diag sprintf 'took %.1f s', time - $T0;
done_testing;
