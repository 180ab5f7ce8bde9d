# The worker's cmocka unit tests (t/unit/test_worker_*.c: event codec, retry policy,
# configuration, quote state machine, insurer file, PostgreSQL addresses, the ring of
# applications completed lately, results' copy of the quotes), built with ASan and UBSan: each cmocka
# test becomes one test here, and a sanitizer report or a non-zero exit fails the file.
use strict;
use warnings;

use Test::More;
use File::Spec;

use lib 't/lib';
use OsagoTest;

# test_worker_insurers also checks the shipped conf/insurers.json, by a relative path.
chdir OsagoTest::root() or die "cannot chdir to the repository root: $!";

OsagoTest::run_cmocka(File::Spec->catfile(OsagoTest::build_dir(), 'san', "test_worker_$_"), $_)
    for qw(event retry config quote_state insurers pg_hosts completed_ring quote_cache);

done_testing();
