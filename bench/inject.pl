#!/usr/bin/env perl
# bench/inject.pl PORT RATE SECONDS OUTFILE: appends accepted applications to the osago:intake stream
# exactly as the edge does (read model + stream entry), at a fixed rate, pipelined; writes
# "app_id intake_ms" per application to OUTFILE. Bounded by RATE x SECONDS entries.
use strict;
use warnings;
use IO::Socket::IP;
use Time::HiRes qw(time sleep);
use POSIX qw(strftime);

my ($port, $rate, $secs, $out) = @ARGV;
die "usage: inject.pl PORT RATE SECONDS OUTFILE\n" unless $out;
my $s = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $port, Proto => 'tcp') or die "redis: $!";
open my $fh, '>', $out or die "$out: $!";

my $start = strftime('%Y-%m-%d', gmtime(time + 7 * 86400));
my $payload = qq({"drivers":[{"birth_date":"1985-04-12","license_issued_date":"2005-06-01"}],"kbm_class":"3","owner":{"birth_date":"1985-04-12","region_code":"77"},"period_months":12,"start_date":"$start","vehicle":{"category":"B","power_hp":150,"vin":"XTA21099012345678","year":2018}});

sub cmd { '*' . @_ . "\r\n" . join('', map { '$' . length($_) . "\r\n$_\r\n" } @_) }
sub hex_n { join '', map { sprintf '%02x', int rand 256 } 1 .. $_[0] }

my $total = int($rate * $secs);
my $t0 = time;
my $sent = 0;
my $pending = 0;
while ($sent < $total) {
    my $due = int((time - $t0) * $rate) + 1;
    $due = $total if $due > $total;
    my $buf = '';
    while ($sent < $due) {
        my $ms = int(time * 1000);
        my $h = sprintf '%012x', $ms;
        my $id = substr($h, 0, 8) . '-' . substr($h, 8, 4) . '-7' . hex_n(1) . substr(hex_n(1), 0, 1)
               . '-a' . substr(hex_n(2), 0, 3) . '-' . hex_n(6);
        my $trace = '00-' . hex_n(16) . '-' . hex_n(8) . '-01';
        my $doc = qq({"id":"$id","status":"accepted","created_at":"x","updated_at":$ms,"insurers":[]});
        $buf .= cmd('HSET', "osago:app:$id", 'doc', $doc, 'owner', 'bench', 'updated_at', $ms);
        $buf .= cmd('XADD', 'osago:intake', '*', 'app_id', $id, 'partner', 'bench',
                    'payload', $payload, 'trace', $trace);
        print $fh "$id $ms\n";
        $sent++;
        $pending += 2;
    }
    print $s $buf if length $buf;
    # drain replies so the socket never fills
    while ($pending > 0) {
        my $rin = '';
        vec($rin, fileno($s), 1) = 1;
        last unless select(my $rout = $rin, undef, undef, 0);
        my $n = sysread($s, my $chunk, 65536) or last;
        $pending -= () = $chunk =~ /\r\n/g;    # one line per reply here (integers, bulk ids count 2)
        $pending = 0 if $pending < 0;
    }
    sleep 0.002;
}
close $fh;
printf "inject: %d applications in %.2f s\n", $sent, time - $t0;
