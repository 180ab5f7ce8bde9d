# The devbroker's cmocka unit tests (t/unit/test_devbroker_kproto.c: reading and patching Kafka
# frames in place), built with ASan and UBSan: each cmocka test becomes one test here, and a
# sanitizer report or a non-zero exit fails the file.
use strict;
use warnings;

use Test::More;
use File::Spec;

use lib 't/lib';
use OsagoTest;

chdir OsagoTest::root() or die "cannot chdir to the repository root: $!";

OsagoTest::run_cmocka(File::Spec->catfile(OsagoTest::build_dir(), 'san', "test_devbroker_$_"), $_)
    for qw(kproto);

done_testing();
