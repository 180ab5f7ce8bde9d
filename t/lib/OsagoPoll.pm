package OsagoPoll;

# Helpers for the long-poll tests (t/7*.t, GET /osago/application/{id}?latest=..., osago_poll):
# read models written the way the edge and the worker write them, a persistent Redis connection
# (to write and publish at precise moments from inside a client loop), single status requests,
# and many requests at once from one process (non-blocking sockets, poll(2): thousands of parked
# connections, requests sent at planned moments, actions such as a PUBLISH interleaved with them,
# abrupt closes).
#
#   use OsagoPoll qw(:all);
#   my $n   = OsagoTest::Nginx->new(redis => $r, http => poll_http(timeout => '2s'));
#   my $id  = uuid4();
#   my $doc = put_app($r, $id, owner => 'acme', updated_at => 1000);      # the exact bytes
#   my $res = poll_get($n, $id, key => $key, latest => 1000);             # like OsagoTest::http
#   publish($r, $id, 2000);
#   my $out = many(port => $n->port, requests => [ { path => .., key => .., at => 0.1 } ... ],
#                  actions => [ [ 0.5, sub { ... } ], when_parked($n, 100, sub { ... }) ],
#                  timeout => 10);
#
# Everything talks to 127.0.0.1 only.

use strict;
use warnings;
use Exporter 'import';
use Carp qw(croak);
use Errno qw(EINPROGRESS EAGAIN EWOULDBLOCK EINTR);
use Fcntl qw(F_GETFL F_SETFL O_NONBLOCK);
use IO::Poll qw(POLLIN POLLOUT POLLERR POLLHUP);
use IO::Select;
use IO::Socket::IP;
use Socket qw(PF_INET SOCK_STREAM IPPROTO_TCP SOL_SOCKET SO_ERROR SO_LINGER TCP_NODELAY
              pack_sockaddr_in inet_aton);
use Time::HiRes qw(time sleep);
use OsagoTest;
use OsagoIntake ();
use OsagoResp;

our @EXPORT_OK = qw(uuid4 poll_http poll_path poll_get put_app app_doc publish rconn many
                    get_request parked poll_metrics wait_parked when_parked hmgets_of);
our %EXPORT_TAGS = (all => \@EXPORT_OK);

sub uuid4 {
    my $h = join '', map { sprintf '%02x', int rand 256 } 1 .. 16;
    substr($h, 12, 1) = '4';
    substr($h, 16, 1) = (qw(8 9 a b))[ int rand 4 ];
    return join '-', substr($h, 0, 8), substr($h, 8, 4), substr($h, 12, 4), substr($h, 16, 4),
        substr($h, 20, 12);
}

# The http{} block of the tests: the status location (its poll timeout), /metrics, and
# whatever more the caller gives (extra => text inside server{}, http_extra => text in http{}).
sub poll_http {
    my (%o) = @_;
    my $timeout = $o{timeout} // '2s';
    my $extra   = $o{extra} // '';
    my $hextra  = $o{http_extra} // '';
    return <<"HTTP";
    osago_redis_server %%REDIS%%;
    osago_partner_cache_ttl 30s;
$hextra
    server {
        listen 127.0.0.1:%%PORT%%;
        location ~ ^/osago/application/(?<app_id>[^/]+)\$ {
            osago_limit on;
            osago_poll \$app_id;
            osago_poll_timeout $timeout;
        }
        location = /metrics { osago_metrics; }
$extra
    }
HTTP
}

sub poll_path {
    my ($id, %o) = @_;
    my $p = "/osago/application/$id";
    $p .= "?latest=$o{latest}" if defined $o{latest};
    return $p;
}

# A read model document, compact, as the worker writes it:
# {"id":..,"status":..,"created_at":..,"updated_at":N,"insurers":[...]}
sub app_doc {
    my ($id, %o) = @_;
    my $u = $o{updated_at} // int(time * 1000);
    my $ins = $o{insurers} // [];
    my $insj = join ',', map {
        sprintf '{"code":"%s","name":"%s","status":"%s","premium_rub":%s,"error":null}',
            $_->{code}, $_->{name} // uc $_->{code}, $_->{status} // 'ok', $_->{premium} // 'null'
    } @$ins;
    return sprintf '{"id":"%s","status":"%s","created_at":"2026-11-28T07:00:00.000Z",'
                 . '"updated_at":%s,"insurers":[%s]%s}',
        $id, $o{status} // 'in_progress', $u, $insj, $o{tail} // '';
}

# put_app($redis or rconn, $id, owner => 'acme', updated_at => ms, status => .., doc => bytes,
#         key_id => the id in the key (default $id)) -> the doc bytes written
sub put_app {
    my ($r, $id, %o) = @_;
    my $u = $o{updated_at} // int(time * 1000);
    my $doc = $o{doc} // app_doc($id, %o, updated_at => $u);
    my $key = 'osago:app:' . ($o{key_id} // $id);
    my @cmd = ('HSET', $key, 'doc', $doc, 'owner', $o{owner} // 'acme', 'updated_at', $u);
    my $res = ref $r eq 'OsagoResp' ? $r->cmd(@cmd) : OsagoIntake::resp($r, @cmd);
    croak "put_app: HSET failed" if ref $res eq 'HASH';
    return $doc;
}

# publish($redis or rconn, $id, $updated_at): what the worker publishes after a change
sub publish {
    my ($r, $id, $u) = @_;
    my @cmd = ('PUBLISH', 'osago:app-updates', "$id $u");
    return ref $r eq 'OsagoResp' ? $r->cmd(@cmd) : OsagoIntake::resp($r, @cmd);
}

sub rconn { OsagoResp->new(@_) }

# poll_get($n, $id, key => .., latest => .., method => .., port => (default $n->port), path =>,
#          headers => {..}, timeout => s): as OsagoTest::http (status, headers, content, elapsed)
sub poll_get {
    my ($n, $id, %o) = @_;
    my %h = %{ $o{headers} || {} };
    $h{'X-API-Key'} = $o{key} if defined $o{key};
    my $path = $o{path} // poll_path($id, latest => $o{latest});
    my $url = $o{port} ? "http://127.0.0.1:$o{port}$path" : $n->url($path);
    return OsagoTest::http($o{method} // 'GET', $url, headers => \%h,
                           timeout => $o{timeout} // 10);
}

sub get_request {
    my (%o) = @_;
    my $req = ($o{method} // 'GET') . " $o{path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            . "Connection: close\r\n";
    $req .= "X-API-Key: $o{key}\r\n" if defined $o{key};
    return "$req\r\n";
}

# metrics of one nginx (parsed), and the parked gauge
sub poll_metrics { OsagoIntake::metrics($_[0]) }
sub parked { OsagoTest::prom_sum(poll_metrics($_[0]), 'osago_poll_parked') // -1 }

# wait_parked($n, $count, $timeout): until osago_poll_parked == $count; returns the last value
sub wait_parked {
    my ($n, $want, $timeout) = @_;
    my $last;
    OsagoTest::wait_for(sub { ($last = parked($n)) == $want }, $timeout // 5, 0.02);
    return $last;
}

# An action for many(): polls osago_poll_parked (without holding up the loop, which goes on
# sending the requests) until it reaches $count (or the timeout passes), then calls
# $code->($now, $t0, $parked) ($now: seconds since many() started, $t0: its start as epoch
# seconds, $parked: the last value seen) and returns what $code returns (more actions).
sub when_parked {
    my ($n, $count, $code, %o) = @_;
    my $limit = $o{timeout} // 10;
    my ($check, $first);
    $check = sub {
        my ($rel, $t0) = @_;
        $first //= $rel;
        my $p = parked($n);
        return [ $rel + ($o{step} // 0.02), $check ] if $p < $count && $rel - $first < $limit;
        undef $check;
        return $code->(time - $t0, $t0, $p);
    };
    return [ $o{at} // 0.02, $check ];
}

# The HMGETs of osago:app:{id} among commands from OsagoTest::Redis->monitor.
sub hmgets_of {
    my ($cmds, $id) = @_;
    return grep { ($_->[1] // '') eq 'hmget' && ($_->[2] // '') eq "osago:app:$id" } @$cmds;
}

# --- many requests at once ---------------------------------------------------------------------

sub _nb_connect {
    my ($port) = @_;
    socket(my $s, PF_INET, SOCK_STREAM, IPPROTO_TCP) or croak "socket: $!";
    my $fl = fcntl($s, F_GETFL, 0) or croak "fcntl: $!";
    fcntl($s, F_SETFL, $fl | O_NONBLOCK) or croak "fcntl: $!";
    setsockopt($s, IPPROTO_TCP, TCP_NODELAY, 1);
    binmode $s;
    my $ok = connect($s, pack_sockaddr_in($port, inet_aton('127.0.0.1')));
    return ($s, 'connected') if $ok;
    return ($s, 'connecting') if $! == EINPROGRESS || $! == EAGAIN;
    return (undef, "connect: $!");
}

# many(port => P, requests => [ {path, key, method, at => s after the start (default 0),
#      close_at => s (abort the connection then, if not answered), rst => 1 (close with RST)}, ],
#      actions => [ [ at_s, sub { ... } ], ... ], timeout => s, max_connecting => 200)
#
# The request hashes are filled in: status, headers, content (parse_response), raw, sent (when
# the request was written, s after the start), done (when the server closed), sent_abs and
# done_abs (the same as epoch seconds), error, aborted (when it was closed by close_at).
# Actions run in the loop at their moment (their own code may block briefly, e.g. a Redis
# command); each is called with (seconds since the start, the start as epoch seconds), and may
# return more actions ([ at, sub ] pairs, at counted from the start) to schedule. Returns { elapsed, answered, unanswered }. Requests that have no answer when the
# timeout passes keep status 599.
sub many {
    my (%o) = @_;
    my $port = $o{port} or croak 'many: port';
    my $timeout = $o{timeout} // 10;
    my $maxc = $o{max_connecting} // 200;
    my @queue = sort { ($a->{at} // 0) <=> ($b->{at} // 0) } @{ $o{requests} };
    my @acts = sort { $a->[0] <=> $b->[0] } @{ $o{actions} || [] };
    my %live;          # fileno => request
    my $connecting = 0;
    my $t0 = time;
    my $deadline = $t0 + $timeout;
    $_->{status} = 599 for @queue;

    my $finish = sub {
        my ($rq) = @_;
        delete $live{ fileno $rq->{sock} };
        $connecting-- if $rq->{state} eq 'connecting';
        close $rq->{sock};
        delete $rq->{sock};
        $rq->{state} = 'done';
        my $p = OsagoIntake::parse_response($rq->{raw} // '');
        @$rq{qw(status headers content)} = @$p{qw(status headers content)};
    };

    while (1) {
        my $now = time;
        last if $now >= $deadline;
        my $rel = $now - $t0;
        while (@acts && $acts[0][0] <= $rel) {
            my @more = grep { ref $_ eq 'ARRAY' && ref $_->[1] eq 'CODE' }
                       (shift @acts)->[1]->(time - $t0, $t0);
            @acts = sort { $a->[0] <=> $b->[0] } @acts, @more if @more;
        }
        while (@queue && ($queue[0]{at} // 0) <= $rel && $connecting < $maxc) {
            my $rq = shift @queue;
            my ($s, $state) = _nb_connect($port);
            if (!$s) { $rq->{error} = $state; $rq->{state} = 'done'; next }
            $rq->{sock} = $s;
            $rq->{out} = get_request(%$rq);
            $rq->{raw} = '';
            $rq->{state} = 'connecting';
            $connecting++;
            $live{ fileno $s } = $rq;
        }
        # abrupt closes that are due
        for my $rq (grep { defined $_->{close_at} && $_->{close_at} <= $rel } values %live) {
            setsockopt($rq->{sock}, SOL_SOCKET, SO_LINGER, pack('ii', 1, 0)) if $rq->{rst};
            $rq->{aborted} = $rel;
            delete $live{ fileno $rq->{sock} };
            $connecting-- if $rq->{state} eq 'connecting';
            close $rq->{sock};
            delete $rq->{sock};
            $rq->{state} = 'done';
        }
        last if !@queue && !@acts && !%live;

        my $wait = 0.05;
        $wait = $acts[0][0] - $rel if @acts && $acts[0][0] - $rel < $wait;
        $wait = ($queue[0]{at} // 0) - $rel
            if @queue && $connecting < $maxc && ($queue[0]{at} // 0) - $rel < $wait;
        $wait = 0 if $wait < 0;
        my @list = map { ($_, $live{$_}{state} eq 'reading' ? POLLIN : POLLOUT) } keys %live;
        my $n = IO::Poll::_poll(int($wait * 1000 + 0.999), @list);
        next unless $n && $n > 0;
        for (my $i = 0; $i < @list; $i += 2) {
            my ($fd, $ev) = @list[ $i, $i + 1 ];
            next unless $ev;
            my $rq = $live{$fd} or next;
            if ($rq->{state} eq 'connecting' || $rq->{state} eq 'writing') {
                if ($rq->{state} eq 'connecting') {
                    my $err = unpack 'i', getsockopt($rq->{sock}, SOL_SOCKET, SO_ERROR) // pack('i', 0);
                    $connecting--;
                    if ($err) {
                        local $! = $err;
                        $rq->{error} = "connect: $!";
                        $rq->{state} = 'writing';    # $finish counts nothing more
                        $finish->($rq);
                        next;
                    }
                    $rq->{state} = 'writing';
                }
                my $w = syswrite($rq->{sock}, $rq->{out});
                if (!defined $w) {
                    next if $! == EAGAIN || $! == EWOULDBLOCK || $! == EINTR;
                    $rq->{error} = "write: $!";
                    $finish->($rq);
                    next;
                }
                substr($rq->{out}, 0, $w, '');
                if (!length $rq->{out}) {
                    $rq->{state} = 'reading';
                    $rq->{sent_abs} = time;
                    $rq->{sent} = $rq->{sent_abs} - $t0;
                }
            } else {
                my $r = sysread($rq->{sock}, $rq->{raw}, 65536, length $rq->{raw});
                if (!defined $r) {
                    next if $! == EAGAIN || $! == EWOULDBLOCK || $! == EINTR;
                    $rq->{error} = "read: $!";
                }
                next if $r;
                $rq->{done_abs} = time;
                $rq->{done} = $rq->{done_abs} - $t0;
                $finish->($rq);
            }
        }
    }
    # what is left: unanswered
    for my $rq (values %live) {
        close $rq->{sock};
        delete $rq->{sock};
        $rq->{status} = 599;
        $rq->{error} //= 'no answer before the timeout';
        $rq->{state} = 'done';
    }
    my @all = @{ $o{requests} };
    return { elapsed => time - $t0, t0 => $t0,
             answered => scalar(grep { $_->{status} != 599 } @all),
             unanswered => scalar(grep { $_->{status} == 599 && !$_->{aborted} } @all) };
}

1;
