#!/usr/bin/perl
# Hundreds of requests in flight at once (many partners, same event-loop ticks, so the workers
# batch them): exact burst counts, every answer for the right partner, distinct RateLimit r.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use IO::Select;
use IO::Socket::IP;
use Time::HiRes qw(time sleep);
use OsagoTest;

my $r = OsagoTest::Redis->new;
my $n = OsagoTest::Nginx->new(redis => $r, workers => 2, http => <<'HTTP');
    osago_redis_server %%REDIS%%;
    server {
        listen 127.0.0.1:%%PORT%% backlog=1024;
        location / {
            osago_limit on;
            add_header X-Partner "$osago_partner" always;
            add_header X-Limit-Status "$osago_limit_status" always;
            empty_gif;
        }
    }
HTTP

# Send every request first, then read every answer.
sub burst_of_requests {
    my (@keys) = @_;
    my (@conns, %by_fh);
    for my $i (0 .. $#keys) {
        my $c = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $n->port, Proto => 'tcp')
            or die "connect: $!";
        binmode $c;
        push @conns, { fh => $c, key => $keys[$i], buf => '' };
        $by_fh{ fileno $c } = $conns[-1];
    }
    # "Together" must not depend on how fast this script writes on a busy machine: the workers,
    # done accepting, are stopped while every request is written and continued after, so each
    # finds its requests waiting at once, as a loaded server does.
    sleep 0.5;
    my @workers = $n->worker_pids;
    kill 'STOP', @workers;
    my $t0 = time;
    syswrite($_->{fh}, "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-API-Key: $_->{key}\r\n\r\n")
        for @conns;
    kill 'CONT', @workers;
    my $sel = IO::Select->new(map { $_->{fh} } @conns);
    my $deadline = time + 10;
    while ($sel->count && time < $deadline) {
        for my $fh ($sel->can_read(0.5)) {
            my $c = $by_fh{ fileno $fh };
            my $got = sysread($fh, $c->{buf}, 65536, length $c->{buf});
            next if $got;
            $sel->remove($fh);
            close $fh;
        }
    }
    my $took = time - $t0;
    for my $c (@conns) {
        my ($head) = split /\r\n\r\n/, $c->{buf}, 2;
        $c->{status} = ($head // '') =~ m{^HTTP/1\.\d (\d+)} ? $1 : 599;
        $c->{partner} = ($head // '') =~ /^X-Partner: ?(.*?)\r?$/mi ? $1 : '';
        $c->{outcome} = ($head // '') =~ /^X-Limit-Status: ?(.*?)\r?$/mi ? $1 : '';
        $c->{r} = ($head // '') =~ /^RateLimit: ?"partner";r=(\d+)/mi ? $1 : undef;
        $c->{type} = $c->{buf} =~ /"type":"urn:osago:problem:([a-z-]+)"/ ? $1 : '';
        close $c->{fh} if $sel->exists($c->{fh});
    }
    return ($took, @conns);
}

for my $round (1 .. 2) {
    my %partner;    # key -> name
    for my $p (1 .. 10) {
        my $name = "r${round}p$p";
        $partner{ OsagoTest::add_partner($r, name => $name, rate => 0.001, burst => 10) } = $name;
    }
    my $unknown = OsagoTest::random_key();
    my $disabled = OsagoTest::add_partner($r, name => "r${round}off", enabled => 0);
    my @keys = ((sort keys %partner) x 25, ($unknown, $disabled) x 10);
    # interleave: every partner's requests spread over the whole burst
    @keys = map { $keys[ ($_ * 37) % @keys ] } 0 .. $#keys;
    my ($took, @res);
    my $mon = $r->monitor(sub { ($took, @res) = burst_of_requests(@keys) });
    my $calls = grep { $_->[0] ne 'lua' && $_->[1] =~ /^eval/ } @$mon;
    diag("round $round: $calls script calls for 250 requests of known partners");
    cmp_ok($calls, '<', 125, "round $round: requests arriving together share script calls"
                              . " (at least two a call on average)");
    diag(sprintf 'round %d: %d requests in flight, all answered in %.2f s', $round, scalar @res, $took);

    my @lost = grep { $_->{status} == 599 } @res;
    ok(!@lost, "round $round: every request answered") or diag scalar(@lost) . ' unanswered';
    my (@wrong, %admitted, %r, %other);
    for my $c (@res) {
        if (my $name = $partner{ $c->{key} }) {
            push @wrong, "$name got '$c->{partner}'" if $c->{partner} ne $name;
            if ($c->{status} == 200) { $admitted{$name}++; push @{ $r{$name} }, $c->{r} // 'undef' }
            elsif ($c->{status} != 429) { $other{$name}{ $c->{status} }++ }
        } elsif ($c->{key} eq $unknown) {
            push @wrong, "unknown: $c->{status} $c->{type}"
                unless $c->{status} == 401 && $c->{type} eq 'api-key-unknown';
        } else {
            push @wrong, "disabled: $c->{status} $c->{type}"
                unless $c->{status} == 401 && $c->{type} eq 'api-key-disabled';
        }
    }
    ok(!@wrong, "round $round: every answer is for the partner that asked")
        or diag explain [ @wrong[0 .. ($#wrong < 9 ? $#wrong : 9)] ];
    ok(!%other, "round $round: only 200 and 429 for known partners") or diag explain \%other;
    my @bad_count = grep { ($admitted{$_} // 0) != 10 } sort values %partner;
    ok(!@bad_count, "round $round: each partner got exactly its burst of 10 out of 25")
        or diag explain { map { $_ => $admitted{$_} // 0 } @bad_count };
    my @bad_r = grep { join(',', sort { $a <=> $b } @{ $r{$_} || [] }) ne '0,1,2,3,4,5,6,7,8,9' }
                sort values %partner;
    ok(!@bad_r, "round $round: the admitted ones saw r = 9..0, each once")
        or diag explain { map { $_ => $r{$_} } @bad_r };
}

unlike($n->error_log, qr/\[(alert|emerg|crit)\]|exited on signal/, 'no alerts in error.log')
    or diag $n->error_log;

done_testing;
