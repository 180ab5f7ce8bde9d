#!/usr/bin/perl
# tools/devbroker: librdkafka's mock cluster behind a fixed bootstrap port, driven with kcat,
# and its control port (broker down/up, rtt, topic errors).
use strict;
use warnings;
use lib 't/lib';
use OsagoTest;
use Test::More;
use File::Spec;
use File::Temp qw(tempdir);
use IO::Select;
use IO::Socket::IP;
use JSON::PP;
use POSIX qw(:sys_wait_h);
use Time::HiRes qw(time sleep);

my $BIN = File::Spec->catfile(OsagoTest::build_dir(), 'san', 'devbroker');
die "devbroker not built: $BIN is missing (make build/san/devbroker)\n" unless -x $BIN;
my ($kc) = OsagoTest::run_cmd('sh', '-c', 'command -v kcat');
die "kcat is not installed (apt-get install kcat)\n" if $kc;

my @TOPICS = qw(osago.application.created osago.application.started osago.application.task
                osago.application.task-result);
my $DIR = tempdir('osago-devbroker-XXXXXX', TMPDIR => 1, CLEANUP => 1);
my %PIDS;    # devbrokers this test started, stopped by pid in END

$ENV{ASAN_OPTIONS} //= 'detect_leaks=1';

# start(@args) -> {pid, port, control, err (stderr file), out}; waits for the ready line.
sub start_devbroker {
    my (%o) = @_;
    my $port = $o{port} // OsagoTest::free_port();
    my $ctl  = OsagoTest::free_port();
    my $err  = "$DIR/devbroker-$port.err";
    pipe(my $r, my $w) or die "pipe: $!";
    my $pid = fork // die "fork: $!";
    if ($pid == 0) {
        close $r;
        open STDOUT, '>&', $w or POSIX::_exit(127);
        open STDERR, '>', $err or POSIX::_exit(127);
        { exec $BIN, '--listen', "127.0.0.1:$port", '--control', "127.0.0.1:$ctl",
             @{ $o{args} || [] } };
        POSIX::_exit(127);
    }
    close $w;
    $PIDS{$pid} = 1;
    my $self = { pid => $pid, port => $port, control => $ctl, err => $err, out => '' };
    my $sel = IO::Select->new($r);
    my $deadline = time + 15;
    while (time < $deadline && $self->{out} !~ /\n/) {
        last unless $sel->can_read($deadline - time);
        sysread($r, $self->{out}, 4096, length $self->{out}) or last;
    }
    $self->{rpipe} = $r;
    return $self;
}

sub stop_devbroker {
    my ($d, $sig) = @_;
    my $t0 = time;
    kill $sig // 'TERM', $d->{pid};
    my $done = OsagoTest::wait_for(sub { waitpid($d->{pid}, WNOHANG) == $d->{pid} }, 10, 0.01);
    my $status = $?;
    delete $PIDS{ $d->{pid} } if $done;
    return ($done ? $status : undef, time - $t0);
}

END {
    for my $pid (keys %PIDS) {
        kill 'KILL', $pid;
        waitpid($pid, 0);
    }
}

# One control command per connection, like a shell script with nc would send it.
sub control {
    my ($d, @lines) = @_;
    my $s = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $d->{control},
                                Proto => 'tcp', Timeout => 3) or return "connect: $!";
    my @answers;
    my $buf = '';
    my $sel = IO::Select->new($s);
    for my $line (@lines) {
        print {$s} "$line\n";
        while ($buf !~ /\n/) {
            last unless $sel->can_read(5);
            sysread($s, $buf, 4096, length $buf) or last;
        }
        $buf =~ s/^([^\n]*)\n// or last;
        push @answers, $1;
    }
    close $s;
    return wantarray ? @answers : $answers[0];
}

sub kcat {
    my ($d, @args) = @_;
    my $input = ref $args[0] eq 'SCALAR' ? shift @args : undef;
    return OsagoTest::kcat("127.0.0.1:$d->{port}", $input, @args);
}

sub metadata {
    my ($d, @args) = @_;
    my ($code, $out, $err) = kcat($d, '-L', '-J', @args);
    my $m = eval { decode_json($out) };
    diag("kcat -L failed ($code): $err") unless $m;
    return $m;
}

sub consume_all {
    my ($d, $topic) = @_;
    my ($code, $out, $err) = kcat($d, '-C', '-t', $topic, '-o', 'beginning', '-e', '-q',
                                  '-f', '%k=%s\n');
    return ($code, [ sort split /\n/, $out ], $err);
}

# --- start -------------------------------------------------------------------------------
my $d = start_devbroker();
like($d->{out}, qr/^devbroker: ready bootstrap=127\.0\.0\.1:$d->{port}\n\z/,
     'prints the ready line with the bootstrap address');
is(control($d, 'ping'), 'ok', 'control port answers ping');

# --- metadata: the four topics of DESIGN.md, four partitions each --------------------------
my $m = metadata($d);
ok($m, 'kcat -L through the bootstrap port');
is_deeply([ sort map { $_->{topic} } @{ $m->{topics} || [] } ], [ sort @TOPICS ],
          'the four osago topics exist');
is_deeply([ map { scalar @{ $_->{partitions} } } @{ $m->{topics} || [] } ], [ 4, 4, 4, 4 ],
          'four partitions each');
is(scalar @{ $m->{brokers} || [] }, 1, 'one broker by default');
like($m->{brokers}[0]{name} // '', qr/^127\.0\.0\.1:\d+$/, 'broker advertised on loopback');

# --- produce and consume --------------------------------------------------------------------
my ($code, $out, $err) = kcat($d, \"one\ntwo\nthree\n", '-P', '-t', 'osago.application.created',
                              '-k', 'app-1');
is($code, 0, 'kcat -P produced') or diag($err);
my ($ccode, $msgs) = consume_all($d, 'osago.application.created');
is($ccode, 0, 'kcat -C -e exits at the end');
is_deeply($msgs, [ 'app-1=one', 'app-1=three', 'app-1=two' ], 'consumed what was produced');

($code, $out) = kcat($d, '-C', '-t', 'osago.application.created', '-o', 'beginning', '-e', '-q',
                     '-f', '%p\n');
my %parts = map { $_ => 1 } split /\n/, $out;
is(scalar keys %parts, 1, 'one key stays in one partition');

# --- a consumer group commits its offsets ---------------------------------------------------
my @group = ('-G', 'osago-test-group', '-X', 'session.timeout.ms=6000',
             '-X', 'auto.offset.reset=earliest', '-e', '-q', '-f', '%s\n',
             'osago.application.created');
($code, $out, $err) = kcat($d, @group);
is($code, 0, 'group consumer ran') or diag($err);
is_deeply([ sort split /\n/, $out ], [ qw(one three two) ], 'group consumer read everything');
kcat($d, \"four\n", '-P', '-t', 'osago.application.created', '-k', 'app-2');
($code, $out, $err) = kcat($d, @group);
is($out, "four\n", 'the same group resumes from its committed offsets') or diag($err);

# --- every connection goes through devbroker ---------------------------------------------------
my $boot_log = OsagoTest::_slurp($d->{err});
my ($mock_port, $adv_port) = $boot_log =~ /mock brokers at 127\.0\.0\.1:(\d+), advertised as 127\.0\.0\.1:(\d+)/;
ok($mock_port && $adv_port && $mock_port != $adv_port, 'the log names the mock port and the relay port in its place')
    or diag($boot_log);
is($m->{brokers}[0]{name}, "127.0.0.1:$adv_port", 'metadata advertises the relay port, not the mock port');

sub stats {
    my ($dd) = @_;
    my $line = control($dd, 'stats') // '';
    my %s = $line =~ /(\w+)=(\d+)/g;
    return ($line =~ /^ok /) ? \%s : undef;
}
ok(stats($d), 'stats answers ok with counters');

# --- a waiting fetch is answered when data arrives, not when its wait is over -----------------
# The mock alone answers an empty fetch only once fetch.wait.max.ms is over; Kafka (and the
# relay) as soon as a produce lands in one of its topics. The consumer waits 2 s per fetch: each
# message must arrive well within a quarter of that.
my $WAIT_MS = 2000;
my $topic = 'osago.application.started';
my $held0 = stats($d)->{held};
my $cpid = open(my $cfh, '-|', 'timeout', '60', 'kcat', '-C', '-b', "127.0.0.1:$d->{port}", '-t', $topic,
                '-o', 'end', '-u', '-q', '-f', '%T %s\n', '-X', "fetch.wait.max.ms=$WAIT_MS")
    // die "kcat: $!";
my $csel = IO::Select->new($cfh);
my $parked = OsagoTest::wait_for(sub { my $s = stats($d); $s && $s->{held} > $held0 }, 15, 0.05);
ok($parked, 'the consumer\'s empty fetch is held at the relay');
my $before = stats($d);
kcat($d, \"elsewhere\n", '-P', '-t', 'osago.application.task-result', '-k', 'other');
sleep 0.3;
my $after = stats($d);
is($after->{woken}, $before->{woken}, 'a produce to another topic wakes nothing');
cmp_ok($after->{produces}, '>', $before->{produces}, 'stats count the produce');
cmp_ok($after->{requests}, '>=', $after->{produces} + $after->{fetches}, 'and every request, fetches and produces among them');
ok(!$csel->can_read(0), 'and the consumer got nothing');
my (@delays, $cbuf);
$cbuf = '';
# "-o end" is resolved partition by partition: until every partition has its position, a
# message produced to one still resolving would be skipped. One message to each partition, again
# to those not seen yet, until the consumer has shown all of them.
my $nparts = scalar @{ (grep { $_->{topic} eq $topic } @{ $m->{topics} })[0]{partitions} };
my %primed;
my $prime_deadline = time + 15;
while (keys %primed < $nparts && time < $prime_deadline) {
    kcat($d, \"prime-$_\n", '-P', '-t', $topic, '-p', $_) for grep { !$primed{$_} } 0 .. $nparts - 1;
    my $until = time + 1;
    while (time < $until && $csel->can_read($until - time)) {
        sysread($cfh, $cbuf, 4096, length $cbuf) or last;
        $primed{$1} = 1 while $cbuf =~ s/^\S+ prime-(\d+)\n//;
    }
}
is(scalar keys %primed, $nparts, "the consumer reads all $nparts partitions of $topic");
sleep 0.3;    # its next fetch held again
for my $i (1 .. 5) {
    kcat($d, \"wake-$i\n", '-P', '-t', $topic, '-k', "w$i");
    my $deadline = time + 5;
    while ($cbuf !~ /\n/ && time < $deadline) {
        last unless $csel->can_read($deadline - time);
        sysread($cfh, $cbuf, 4096, length $cbuf) or last;
        $cbuf =~ s/^\S+ prime-\d+\n//mg;    # a late duplicate of the priming
    }
    my $got = time;
    if ($cbuf =~ s/^(\d+) (\S+)\n//) {
        push @delays, $got * 1000 - $1;
        is($2, "wake-$i", "message $i consumed");
    } else {
        fail("message $i consumed");
    }
    sleep 0.2;
}
my @sorted = sort { $a <=> $b } @delays;
diag(sprintf('produce to consume with fetch.wait.max.ms=%d: %s ms', $WAIT_MS,
             join(' ', map { int } @sorted)));
ok(@sorted == 5 && $sorted[-1] < $WAIT_MS / 4,
   sprintf('every message arrived within a quarter of the fetch wait (max %d ms)', $sorted[-1] // -1));
my $woke = stats($d);
ok($woke->{woken} >= $after->{woken} + 5, 'each produce woke the held fetch')
    or diag(explain($woke));
kill 'TERM', $cpid;
close $cfh;

# A fetch that finds nothing is still answered when its wait is over: kcat -e exits at the end
# of the partitions, which it learns from that empty answer.
my $exp0 = stats($d);
my $t_exp = time;
($code, $out, $err) = kcat($d, '-C', '-t', $topic, '-o', 'end', '-e', '-q', '-X', 'fetch.wait.max.ms=700');
my $took_exp = time - $t_exp;
is($code, 0, 'a consumer at the end exits at the end') or diag($err);
ok($took_exp >= 0.7 * 0.7 && $took_exp < 10, sprintf('after about its fetch wait (%.2f s for 0.7 s)', $took_exp));
ok(stats($d)->{expired} > $exp0->{expired}, 'the empty answer went out when the wait was over');

# --- faults through the control port ---------------------------------------------------------
is(control($d, 'broker down 1'), 'ok', 'broker down 1');
my $t0 = time;
($code, $out, $err) = kcat($d, \"lost\n", '-P', '-t', 'osago.application.created', '-k', 'app-3',
                           '-X', 'message.timeout.ms=1500');
isnt($code, 0, 'produce fails while the broker is down');
ok(time - $t0 < 10, 'and fails within the message timeout');
ok(!OsagoTest::port_open($d->{port}), 'bootstrap port refuses connections, like a down broker');

is(control($d, 'broker up 1'), 'ok', 'broker up 1');
($code, $out, $err) = kcat($d, \"back\n", '-P', '-t', 'osago.application.created', '-k', 'app-3',
                           '-X', 'message.timeout.ms=5000');
is($code, 0, 'produce works again after broker up') or diag($err);
(undef, $msgs) = consume_all($d, 'osago.application.created');
ok((grep { $_ eq 'app-3=back' } @$msgs), 'the message after recovery is there');
ok(!(grep { $_ eq 'app-3=lost' } @$msgs), 'the one produced while down is not');

is(control($d, 'broker rtt 1 300'), 'ok', 'broker rtt 1 300');
$t0 = time;
$m = metadata($d);
ok($m && time - $t0 >= 0.3, 'requests take at least the rtt');
is(control($d, 'broker rtt 1 0'), 'ok', 'rtt back to 0');

is(control($d, 'topic error osago.application.task UNKNOWN_TOPIC_OR_PART'), 'ok',
   'topic error set');
$m = metadata($d, '-t', 'osago.application.task');
like($m->{topics}[0]{error} // '', qr/unknown topic/i, 'metadata reports the topic error');
is(control($d, 'topic error osago.application.task clear'), 'ok', 'topic error cleared');
$m = metadata($d, '-t', 'osago.application.task');
ok($m && !$m->{topics}[0]{error}, 'metadata is clean again');

my @bad = control($d, 'broker down 9', 'topic error x NO_SUCH_ERROR', 'fly', 'broker rtt 1 -5',
                  'ping');
like($bad[0], qr/^error: /, 'unknown broker is an error');
like($bad[1], qr/^error: /, 'unknown error name is an error');
like($bad[2], qr/^error: /, 'unknown command is an error');
like($bad[3], qr/^error: /, 'negative rtt is an error');
is($bad[4], 'ok', 'the connection goes on after errors');

# --- stop ------------------------------------------------------------------------------------
my ($status, $took) = stop_devbroker($d);
is($status, 0, 'exits 0 on SIGTERM');
ok($took < 2, sprintf('stops within 2 s (%.2f s)', $took));
ok(!OsagoTest::port_open($d->{port}), 'bootstrap port closed');
my $log = OsagoTest::_slurp($d->{err});
unlike($log, qr/AddressSanitizer|LeakSanitizer|runtime error/, 'no sanitizer reports') or diag($log);

# --- other shapes: several brokers, own topics, SIGINT ------------------------------------------
my $d3 = start_devbroker(args => [ '--brokers', 3, '--topics', 'a,b', '--partitions', 2 ]);
like($d3->{out}, qr/ready/, 'three-broker cluster ready');
$m = metadata($d3);
is(scalar @{ $m->{brokers} || [] }, 3, 'three brokers');
is_deeply([ sort map { $_->{topic} } @{ $m->{topics} || [] } ], [qw(a b)], 'own topics');
is_deeply([ map { scalar @{ $_->{partitions} } } @{ $m->{topics} || [] } ], [ 2, 2 ],
          'own partition count');
is(control($d3, 'broker down 1'), 'ok', 'one of three down');
ok(metadata($d3), 'bootstrap still answers through another broker');
is(control($d3, 'broker down all'), 'ok', 'all down');
ok(!OsagoTest::port_open($d3->{port}), 'bootstrap refuses with all brokers down');
is(control($d3, 'broker up all'), 'ok', 'all up');
ok(OsagoTest::port_open($d3->{port}), 'bootstrap listens again');
($status, $took) = stop_devbroker($d3, 'INT');
is($status, 0, 'exits 0 on SIGINT');
ok($took < 2, sprintf('stops within 2 s (%.2f s)', $took));

# --- bad flags ---------------------------------------------------------------------------------
for my $case ([ [ '--brokers', 0 ], 'zero brokers' ],
              [ [ '--listen', '10.1.2.3:9092' ], 'non-loopback listen address' ],
              [ [ '--topics', 'bad topic' ], 'bad topic name' ],
              [ [ '--nonsense' ], 'unknown flag' ]) {
    my ($c, undef, $e) = OsagoTest::run_cmd($BIN, @{ $case->[0] });
    is($c, 2, "rejects $case->[1]") or diag($e);
}
{
    my $busy = IO::Socket::IP->new(LocalHost => '127.0.0.1', LocalPort => 0, Listen => 1)
        or die $!;
    my ($c, undef, $e) = OsagoTest::run_cmd($BIN, '--listen', '127.0.0.1:' . $busy->sockport);
    is($c, 1, 'a port in use fails at once');
    like($e, qr/listen/, 'and says why');
}

done_testing;
