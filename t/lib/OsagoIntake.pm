package OsagoIntake;

# Helpers shared by the intake tests (t/4*.t): a valid application body with dates relative to
# today, requests to POST /osago/application, a binary-safe Redis client (RESP) for reading the
# stream and hashes exactly, the intake's Redis footprint, problem assertions, metric deltas, and
# many requests sent at once over non-blocking sockets.
#
#   use OsagoIntake qw(:all);
#   my $body = app_json(vehicle => { power_hp => 151 });      # deep-merged overrides
#   my $res  = submit($n, key => $api_key, idem => idem_key(), body => $body);
#   is_problem($res, 400, 'invalid-field', 'what', pointer => '/vehicle/power_hp');

use strict;
use warnings;
use Exporter 'import';
use Carp qw(croak);
use IO::Select;
use IO::Socket::IP;
use OsagoResp;
use JSON::PP ();
use POSIX qw(strftime);
use Test::More;
use Time::HiRes qw(time sleep);
use OsagoTest;

our @EXPORT_OK = qw(app_data app_json date_from_today idem_key submit hdr is_problem
                    resp hgetall footprint is_clean metrics metric_delta parallel_raw parse_response
                    post_request uuid7_re trace_re);
our %EXPORT_TAGS = (all => \@EXPORT_OK);

our $JSON = JSON::PP->new->canonical->utf8;

sub uuid7_re { qr/^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/ }
sub trace_re { qr/^00-([0-9a-f]{32})-([0-9a-f]{16})-01$/ }

# YYYY-MM-DD, UTC, $days from today (negative: in the past); years => N shifts by whole years
# (Feb 29 becomes Feb 28).
sub date_from_today {
    my ($days, %o) = @_;
    my @t = gmtime(time + ($days // 0) * 86400);
    my ($y, $m, $d) = ($t[5] + 1900 + ($o{years} // 0), $t[4] + 1, $t[3]);
    $d = 28 if $m == 2 && $d == 29;
    return sprintf '%04d-%02d-%02d', $y, $m, $d;
}

sub _merge {
    my ($base, $over) = @_;
    for my $k (keys %$over) {
        my $v = $over->{$k};
        if (!defined $v) { delete $base->{$k}; next }    # undef removes the field
        if (ref $v eq 'HASH' && ref $base->{$k} eq 'HASH') { _merge($base->{$k}, $v) }
        else { $base->{$k} = $v }
    }
    return $base;
}

# A valid application as a Perl structure; overrides are merged in (undef deletes a field).
sub app_data {
    my (%over) = @_;
    my $app = {
        vehicle => { category => 'B', power_hp => 150, year => 2018, vin => 'XTA21099012345678' },
        owner   => { region_code => '77', birth_date => '1985-04-12' },
        drivers => [ { birth_date => '1985-04-12', license_issued_date => '2005-06-01' } ],
        period_months => 12,
        start_date    => date_from_today(1),
    };
    return _merge($app, \%over);
}

# The same, as JSON bytes (keys sorted, compact).
sub app_json { $JSON->encode(app_data(@_)) }

my $idem_seq = 0;
sub idem_key {
    my ($tag) = @_;
    my $k = sprintf '%s-%d-%d-%06x', $tag // 't', $$, ++$idem_seq, int rand 0xffffff;
    return $k;
}

sub hdr { my $v = $_[0]{headers}{ lc $_[1] }; ref $v ? $v->[0] : $v }

# submit($n, key => api key, idem => key (undef: no header), body => bytes, path => ...,
#        type => content type (undef: none), headers => {...}, user => X-User-Id, method => POST)
sub submit {
    my ($n, %o) = @_;
    my %h;
    $h{'X-API-Key'} = $o{key} if defined $o{key};
    $h{'Idempotency-Key'} = $o{idem} if defined $o{idem};
    $h{'X-User-Id'} = $o{user} if defined $o{user};
    my $type = exists $o{type} ? $o{type} : 'application/json';
    $h{'Content-Type'} = $type if defined $type;
    %h = (%h, %{ $o{headers} || {} });
    my $url = $o{url} // $n->url($o{path} // '/osago/application');
    return OsagoTest::http($o{method} // 'POST', $url, headers => \%h,
                           content => $o{body} // app_json(), timeout => $o{timeout} // 10);
}

# A full HTTP/1.1 request as bytes (Connection: close); body framed by Content-Length unless
# chunked => [ pieces ] is given.
sub post_request {
    my (%o) = @_;
    my $req = ($o{method} // 'POST') . ' ' . ($o{path} // '/osago/application') . " HTTP/1.1\r\n"
            . "Host: 127.0.0.1\r\nConnection: close\r\n";
    $req .= "X-API-Key: $o{key}\r\n" if defined $o{key};
    $req .= "Idempotency-Key: $o{idem}\r\n" if defined $o{idem};
    $req .= "X-User-Id: $o{user}\r\n" if defined $o{user};
    $req .= 'Content-Type: ' . ($o{type} // 'application/json') . "\r\n"
        unless exists $o{type} && !defined $o{type};
    $req .= "$_: $o{headers}{$_}\r\n" for sort keys %{ $o{headers} || {} };
    if ($o{chunked}) {
        $req .= "Transfer-Encoding: chunked\r\n\r\n";
        $req .= sprintf("%x\r\n", length $_) . "$_\r\n" for grep { length } @{ $o{chunked} };
        $req .= "0\r\n\r\n";
    } else {
        my $body = $o{body} // '';
        $req .= 'Content-Length: ' . length($body) . "\r\n\r\n" . $body;
    }
    return $req;
}

# --- assertions --------------------------------------------------------------------------------

# is_problem($res, $status, $type_suffix, $what, pointer => '/x' | qr/../, retry_after => [lo, hi])
sub is_problem {
    my ($res, $status, $type, $what, %o) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my $ok = 1;
    subtest "$what: $status $type" => sub {
        is($res->{status}, $status, 'status')
            or $ok = 0, diag "got $res->{status}: " . substr($res->{content} // '', 0, 300);
        like(hdr($res, 'content-type') // '', qr{^application/problem\+json\b}, 'problem+json')
            or $ok = 0;
        my $j = OsagoTest::problem($res);
        ok($j, 'body is a JSON object') or $ok = 0;
        $j ||= {};
        is($j->{type}, "urn:osago:problem:$type", 'type') or $ok = 0;
        is($j->{status}, $status, 'status member') or $ok = 0;
        ok(defined $j->{title} && length $j->{title}, 'has a title') or $ok = 0;
        ok(defined $j->{detail} && length $j->{detail}, 'has a human-readable detail') or $ok = 0;
        if (exists $o{pointer}) {
            if (ref $o{pointer} eq 'Regexp') {
                like($j->{pointer} // '', $o{pointer}, 'pointer') or $ok = 0;
            } else {
                is($j->{pointer}, $o{pointer}, "pointer $o{pointer}") or $ok = 0;
            }
        }
        if ($o{retry_after}) {
            my $ra = hdr($res, 'retry-after');
            like($ra // '', qr/^\d+$/, 'Retry-After in seconds') or $ok = 0;
            cmp_ok($ra // -1, '>=', $o{retry_after}[0], "Retry-After >= $o{retry_after}[0]") or $ok = 0;
            cmp_ok($ra // 1e9, '<=', $o{retry_after}[1], "Retry-After <= $o{retry_after}[1]") or $ok = 0;
        }
    };
    return $ok;
}

# --- Redis, binary safe ------------------------------------------------------------------------

# resp($redis, @command): the reply as Perl data (arrays as array refs, errors as { error => }),
# on a connection of its own.
sub resp {
    my ($r, @cmd) = @_;
    my $c = OsagoResp->new($r);
    my $v = $c->cmd(@cmd);
    $c->disconnect;
    return $v;
}

# hash as a Perl hash
sub hgetall { my ($r, $k) = @_; my %h = @{ resp($r, 'HGETALL', $k) || [] }; \%h }

# What the intake left in Redis: { xlen, entries => [ {id, fields => {..}, order => [..]} ],
# apps => [keys], idem => [keys], users => [keys] }
sub footprint {
    my ($r) = @_;
    my $keys = resp($r, 'KEYS', 'osago:*') || [];
    my $xlen = resp($r, 'EXISTS', 'osago:intake') ? resp($r, 'XLEN', 'osago:intake') : 0;
    my $xr = $xlen ? resp($r, 'XRANGE', 'osago:intake', '-', '+') : [];
    my @entries = map {
        my ($id, $kv) = @$_;
        my @kv = @$kv;
        my %f = @kv;
        { id => $id, fields => \%f, order => [ @kv[ grep { !($_ % 2) } 0 .. $#kv ] ] }
    } @$xr;
    return {
        xlen    => $xlen,
        entries => \@entries,
        apps    => [ sort grep { /^osago:app:/ } @$keys ],
        idem    => [ sort grep { /^osago:idem:/ } @$keys ],
        users   => [ sort grep { /^osago:rl:user:/ } @$keys ],
        stream  => scalar(grep { $_ eq 'osago:intake' } @$keys),
    };
}

# is_clean($r, $what): no intake stream, no application, no idempotency record.
sub is_clean {
    my ($r, $what, %o) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my $f = footprint($r);
    my @bad = (@{ $f->{apps} }, @{ $f->{idem} }, $f->{stream} ? 'osago:intake' : (),
               $o{users} ? @{ $f->{users} } : ());
    return ok(!@bad, "$what: nothing in Redis (no stream, osago:app:*, osago:idem:*)")
        || diag explain \@bad;
}

# --- metrics -------------------------------------------------------------------------------------

sub metrics {
    my ($n, $path) = @_;
    my $res = OsagoTest::http(GET => $n->url($path // '/metrics'));
    croak "metrics: $res->{status}" unless $res->{status} == 200;
    return OsagoTest::prom_parse($res->{content});
}

# metric_delta($before, $after, 'name', label => v): after - before (undef series count as 0)
sub metric_delta {
    my ($a, $b, $name, %l) = @_;
    return (OsagoTest::prom_sum($b, $name, %l) // 0) - (OsagoTest::prom_sum($a, $name, %l) // 0);
}

# --- many requests at once -----------------------------------------------------------------------

sub parse_response {
    my ($buf) = @_;
    my ($head, $body) = split /\r\n\r\n/, $buf, 2;
    return { status => 599, headers => {}, content => $buf }
        unless defined $head && $head =~ m{^HTTP/\d\.\d (\d{3})};
    my $status = $1;
    my %h;
    for my $line (split /\r\n/, $head) {
        next unless $line =~ /^([^:\s]+):\s*(.*)$/;
        my ($k, $v) = (lc $1, $2);
        if (exists $h{$k}) { $h{$k} = [ ref $h{$k} ? @{$h{$k}} : $h{$k}, $v ] }
        else { $h{$k} = $v }
    }
    $body //= '';
    if (($h{'transfer-encoding'} // '') =~ /chunked/i) {
        my $out = '';
        while ($body =~ s/^([0-9a-fA-F]+)[^\r\n]*\r\n//) {
            my $len = hex $1;
            last if $len == 0;
            $out .= substr($body, 0, $len, '');
            $body =~ s/^\r\n//;
        }
        $body = $out;
    }
    return { status => $status, headers => \%h, content => $body };
}

# parallel_raw($port, [ request bytes, ... ], timeout => s): connect all, then send every
# request as fast as possible, then read every answer until the server closes.
sub parallel_raw {
    my ($port, $reqs, %o) = @_;
    my $timeout = $o{timeout} // 10;
    my @c;
    for my $req (@$reqs) {
        my $s = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port, Proto => 'tcp',
                                    Timeout => 5) or croak "parallel_raw: connect: $!";
        binmode $s;
        $s->blocking(0);
        push @c, { s => $s, out => $req, in => '', done => 0 };
    }
    my $deadline = time + $timeout;
    # write everything (requests are small: one syswrite each normally suffices)
    my $pending = 1;
    while ($pending && time < $deadline) {
        $pending = 0;
        for my $c (@c) {
            next unless length $c->{out};
            my $w = syswrite($c->{s}, $c->{out});
            substr($c->{out}, 0, $w, '') if $w;
            $pending = 1 if length $c->{out};
        }
        sleep 0.001 if $pending;
    }
    my $sel = IO::Select->new(map { $_->{s} } @c);
    my %by = map { (0 + $_->{s}) => $_ } @c;
    while ($sel->count && time < $deadline) {
        for my $s ($sel->can_read($deadline - time)) {
            my $c = $by{ 0 + $s };
            my $n = sysread($s, $c->{in}, 65536, length $c->{in});
            next if !defined $n && $!{EAGAIN};
            $sel->remove($s);
            close $s;
            $c->{done} = 1;
        }
    }
    for my $c (grep { !$_->{done} } @c) { close $c->{s} }
    return [ map { my $x = parse_response($_->{in}); $x->{complete} = $_->{done}; $x } @c ];
}

1;
