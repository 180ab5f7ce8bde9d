# The application validator's cmocka unit tests (t/unit/test_osago_application.c), built with
# ASan and UBSan: each cmocka test becomes one test here, and a sanitizer report fails the file.
use strict;
use warnings;

use Test::More;
use File::Spec;
use File::Temp qw(tempfile);

use lib 't/lib';
use OsagoTest;

my $BIN = File::Spec->catfile(OsagoTest::build_dir(), 'san', 'test_osago_application');
OsagoTest::bail("unit tests are not built: $BIN is missing (make build/san/test_osago_application)")
    unless -x $BIN;

my ($errfh, $errfile) = tempfile('osago-app-validate-XXXXXX', TMPDIR => 1, UNLINK => 1);
close $errfh;

my $tap = do {
    local $ENV{CMOCKA_MESSAGE_OUTPUT} = 'TAP';
    # UBSan reports and carries on by default; a report still fails the file below.
    local $ENV{UBSAN_OPTIONS} = 'print_stacktrace=1';
    open(my $out, '-|', "exec '$BIN' 2>'$errfile'") or die "cannot run $BIN: $!";
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
        ok(!$1, $2);
    } elsif ($line =~ /^#/ && $line !~ /^# ok - /) {
        diag($line);
    }
}

ok(defined $planned && $planned > 0 && $seen == $planned,
   'cmocka ran every test it planned (' . ($planned // 'no plan') . ", saw $seen)");
is($status >> 8, 0, 'test binary exited with 0') or diag($stderr);
unlike($stderr, qr/Sanitizer|runtime error:/, 'no sanitizer reports') or diag($stderr);

done_testing();
