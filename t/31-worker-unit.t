# The worker's cmocka unit tests (t/unit/test_worker_*.c: event codec, retry policy,
# configuration, quote state machine, insurer file), built with ASan and UBSan: each cmocka
# test becomes one test here, and a sanitizer report or a non-zero exit fails the file.
use strict;
use warnings;

use Test::More;
use File::Spec;
use File::Temp qw(tempfile);

use lib 't/lib';
use OsagoTest;

my @UNITS = qw(event retry config quote_state insurers);

# test_worker_insurers also checks the shipped conf/insurers.json, by a relative path.
chdir OsagoTest::root() or die "cannot chdir to the repository root: $!";

for my $unit (@UNITS) {
    my $bin = File::Spec->catfile(OsagoTest::build_dir(), 'san', "test_worker_$unit");
    OsagoTest::bail("unit tests are not built: $bin is missing (make build/san/test_worker_$unit)")
        unless -x $bin;
}

sub run_unit {
    my ($unit) = @_;
    my $bin = File::Spec->catfile(OsagoTest::build_dir(), 'san', "test_worker_$unit");
    my ($errfh, $errfile) = tempfile("osago-worker-unit-$unit-XXXXXX", TMPDIR => 1, UNLINK => 1);
    close $errfh;

    my $tap = do {
        local $ENV{CMOCKA_MESSAGE_OUTPUT} = 'TAP';
        # UBSan reports and carries on by default; a report still fails the file below.
        local $ENV{UBSAN_OPTIONS} = 'print_stacktrace=1';
        open(my $out, '-|', "exec '$bin' 2>'$errfile'") or die "cannot run $bin: $!";
        local $/;
        my $text = <$out>;
        close $out;
        $text // '';
    };
    my $status = $?;
    my $stderr = do { local (@ARGV, $/) = ($errfile); <> } // '';

    my ($planned) = $tap =~ /^1\.\.(\d+)$/m;
    my $seen = 0;
    for my $line (split /\n/, $tap) {
        if ($line =~ /^(not )?ok \d+ - (.*)$/) {
            $seen++;
            ok(!$1, "$unit: $2");
        } elsif ($line =~ /^#/ && $line !~ /^# ok - /) {
            diag($line);
        }
    }

    ok(defined $planned && $planned > 0 && $seen == $planned,
       "$unit: cmocka ran every test it planned (" . ($planned // 'no plan') . ", saw $seen)");
    is($status >> 8, 0, "$unit: test binary exited with 0") or diag($stderr);
    unlike($stderr, qr/Sanitizer|runtime error:/, "$unit: no sanitizer reports") or diag($stderr);
}

run_unit($_) for @UNITS;

done_testing();
