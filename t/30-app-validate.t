# The application validator's cmocka unit tests (t/unit/test_osago_application.c), built with
# ASan and UBSan: each cmocka test becomes one test here, and a sanitizer report fails the file.
use strict;
use warnings;

use Test::More;
use File::Spec;

use lib 't/lib';
use OsagoTest;

OsagoTest::run_cmocka(File::Spec->catfile(OsagoTest::build_dir(), 'san', 'test_osago_application'),
                      'validator');

done_testing();
