# osagoctl against a real redis-server: what it stores, what it prints, how it fails.
use strict;
use warnings;

use Test::More;
use Digest::SHA qw(sha256_hex);
use File::Spec;
use JSON::PP ();
use POSIX ();
use Time::HiRes qw(time);

use lib 't/lib';
use OsagoTest;

my $BIN = File::Spec->catfile(OsagoTest::build_dir(), 'san', 'osagoctl');
OsagoTest::bail("osagoctl is not built: $BIN is missing (make build/san/osagoctl)") unless -x $BIN;

my $r = OsagoTest::Redis->new;

# Every run goes through the sanitizer build; a report on stderr fails the file at the end even
# when the exit code looked right (UBSan reports and carries on).
my @sanitizer_reports;

sub check_sanitizers {
    my ($err, @args) = @_;
    return unless $err =~ /Sanitizer|runtime error:/;
    push @sanitizer_reports, "osagoctl @args";
    diag("sanitizer report from osagoctl @args:\n$err");
}

# ctl(@args) on the main Redis; ctl_on($redis, @args) elsewhere.
sub ctl_on {
    my ($redis, @args) = @_;
    my @res = OsagoTest::osagoctl($redis, @args);
    check_sanitizers($res[2], @args);
    return @res;
}
sub ctl { ctl_on($r, @_) }

# UTF-8 as RFC 3629 has it (no surrogates, nothing over U+10FFFF, no overlongs), which Perl's
# own decoding is laxer than and Encode's "UTF-8" stricter (it refuses noncharacters).
sub is_strict_utf8 {
    return $_[0] =~ /\A(?:[\x00-\x7f] | [\xc2-\xdf][\x80-\xbf] | \xe0[\xa0-\xbf][\x80-\xbf]
                        | [\xe1-\xec\xee\xef][\x80-\xbf]{2} | \xed[\x80-\x9f][\x80-\xbf]
                        | \xf0[\x90-\xbf][\x80-\xbf]{2} | [\xf1-\xf3][\x80-\xbf]{3}
                        | \xf4[\x80-\x8f][\x80-\xbf]{2})*\z/x;
}

# osagoctl without the harness' --redis, to see the environment defaults at work.
sub ctl_bare {
    my (@args) = @_;
    local $ENV{ASAN_OPTIONS} = $ENV{ASAN_OPTIONS} // 'detect_leaks=1';
    my @res = OsagoTest::run_cmd($BIN, @args);
    check_sanitizers($res[2], @args);
    return @res;
}

sub hgetall {
    my ($redis, $key, @pre) = @_;
    my @kv = $redis->cli(@pre, 'HGETALL', $key);
    return { @kv };
}

sub partner  { hgetall($r, "osago:partner:$_[0]") }
sub index_of { $r->cli('HGET', 'osago:partners', $_[0]) }

# add(name, @flags) -> the printed key (the test dies on failure: everything after depends on it)
sub add {
    my ($name, @flags) = @_;
    my ($code, $out, $err) = ctl('partner', 'add', $name, @flags);
    is($code, 0, "add $name @flags: exit 0") or diag($err);
    like($out, qr/\Aosk_[A-Za-z0-9_-]{43}\n\z/, "add $name: stdout is exactly the key");
    chomp(my $key = $out);
    return $key;
}

# Everything in every database, keys and values, for "is the key stored anywhere in clear".
sub dump_redis {
    my ($redis, @pre) = @_;
    my $all = '';
    for my $db (0 .. 15) {
        for my $k ($redis->cli(@pre, '-n', $db, '--scan')) {
            my $type = $redis->cli(@pre, '-n', $db, 'TYPE', $k);
            my @v = $type eq 'hash'   ? $redis->cli(@pre, '-n', $db, 'HGETALL', $k)
                  : $type eq 'string' ? $redis->cli(@pre, '-n', $db, 'GET', $k)
                  : $type eq 'list'   ? $redis->cli(@pre, '-n', $db, 'LRANGE', $k, 0, -1)
                  : $type eq 'set'    ? $redis->cli(@pre, '-n', $db, 'SMEMBERS', $k)
                  : $type eq 'zset'   ? $redis->cli(@pre, '-n', $db, 'ZRANGE', $k, 0, -1)
                  :                     ();
            $all .= join("\n", "db$db", $k, @v) . "\n";
        }
    }
    return $all;
}

# --- help --------------------------------------------------------------------------------------

for my $args (['--help'], ['help'], ['-h'], ['partner', 'add', '--help']) {
    my ($code, $out, $err) = ctl(@$args);
    is($code, 0, "@$args: exit 0");
    like($out, qr/^Usage: osagoctl .*partner add NAME --rate R/s, "@$args: usage on stdout");
    is($err, '', "@$args: nothing on stderr");
}

# --- add -----------------------------------------------------------------------------------------

my $t0 = time;
my ($code, $out, $err) = ctl('partner', 'add', 'acme', '--rate', '20');
is($code, 0, 'add acme: exit 0') or diag($err);
like($out, qr/\Aosk_[A-Za-z0-9_-]{43}\n\z/, 'add: stdout is only osk_ + 43 base64url characters');
like($err, qr/\Aosagoctl: [^\n]*shown only once[^\n]*SHA-256[^\n]*\n\z/,
     'add: a one-line note on stderr that the key is shown once and only its SHA-256 is stored');
chomp(my $acme_key = $out);
my $acme_hash = sha256_hex($acme_key);

my $p = partner($acme_hash);
is($p->{name},    'acme',    'the partner hash is osago:partner:<sha256(key) hex>, name');
is($p->{rate},    '20',      'rate');
is($p->{burst},   '20',      'burst defaults to ceil(rate)');
is($p->{pool},    'default', 'pool defaults to "default"');
is($p->{enabled}, '1',       'enabled=1');
ok($p->{created_at} =~ /^\d+$/ && abs($p->{created_at} - $t0) < 60, 'created_at is unix seconds, now')
    or diag("created_at=$p->{created_at}");
is_deeply([sort keys %$p], [sort qw(name rate burst pool enabled created_at)], 'no other fields');
is(index_of('acme'), $acme_hash, 'osago:partners maps the name to the key hash');
unlike($err, qr/\Q$acme_key\E/, 'the key is not repeated on stderr');

my $beta_key = add('beta', '--rate', '0.5', '--pool', 'premium');
my $beta = partner(sha256_hex($beta_key));
is_deeply([@$beta{qw(name rate burst pool enabled)}], ['beta', '0.5', '1', 'premium', '1'],
          'rate 0.5: burst rounds up to 1, pool label stored');

my $gamma_key = add('gamma.v2', '--rate', '100.250', '--burst', '7');
my $gamma = partner(sha256_hex($gamma_key));
is($gamma->{rate},  '100.25', 'rate 100.250 is stored as 100.25');
is($gamma->{burst}, '7',      'explicit burst');

add('delta_1-x', '--rate', '2.5');
is(partner(index_of('delta_1-x'))->{burst}, '3', 'rate 2.5: default burst 3');

isnt($acme_key, $beta_key, 'keys differ between partners');

# --- the key is never in Redis in clear ----------------------------------------------------------

{
    my $dump = dump_redis($r);
    like($dump, qr/\Q$acme_hash\E/, 'the dump sees the stored hash (sanity check of the scan)');
    for my $k ($acme_key, $beta_key, $gamma_key) {
        (my $body = $k) =~ s/^osk_//;
        unlike($dump, qr/\Q$body\E/, "no key or value in any database contains key ...".
               substr($body, -6));
    }

    # Not even on the wire: watch every command Redis receives during an add.
    my $mpid = open(my $mon, '-|', $OsagoTest::REDIS_CLI, '-h', '127.0.0.1', '-p', $r->port,
                    'monitor')
        or die "redis-cli monitor: $!";
    my $first = <$mon> // '';
    like($first, qr/^OK/, 'MONITOR is on');
    my ($c, $key) = ctl('partner', 'add', 'watched', '--rate', '1');
    chomp $key;
    $r->cli('ECHO', 'osagoctl-monitor-end');
    my $seen = '';
    eval {
        local $SIG{ALRM} = sub { die "timeout\n" };
        alarm 10;
        while (my $l = <$mon>) {
            $seen .= $l;
            last if $l =~ /osagoctl-monitor-end/;
        }
        alarm 0;
    };
    kill 'TERM', $mpid;
    close $mon;
    is($c, 0, 'add under MONITOR: exit 0');
    like($seen, qr/"watched"/, 'MONITOR saw the add');
    (my $body = $key) =~ s/^osk_//;
    unlike($seen, qr/\Q$body\E/, 'the key itself is never sent to Redis');
    like($seen, qr/\Q${\ sha256_hex($key)}\E/, 'only its hash is');
}

# --- duplicates ----------------------------------------------------------------------------------

($code, $out, $err) = ctl('partner', 'add', 'acme', '--rate', '1');
is($code, 1, 'duplicate add: exit 1');
is($out, '', 'duplicate add: no key printed');
is($err, qq{osagoctl: partner "acme" already exists\n}, 'duplicate add: message');
is(index_of('acme'), $acme_hash, 'duplicate add: index unchanged');
is(partner($acme_hash)->{rate}, '20', 'duplicate add: record unchanged');

{
    # Racing adds of one name: the check and the write are one step, so exactly one wins.
    my @pids;
    for my $i (1 .. 6) {
        my $pid = fork // die "fork: $!";
        if (!$pid) {
            my ($c, undef, $e) = OsagoTest::osagoctl($r, 'partner', 'add', 'racer', '--rate', $i);
            print STDERR $e if $e =~ /Sanitizer|runtime error:/;
            POSIX::_exit($c);
        }
        push @pids, $pid;
    }
    my %codes;
    for my $pid (@pids) {
        waitpid($pid, 0);
        $codes{ $? >> 8 }++;
    }
    is_deeply(\%codes, { 0 => 1, 1 => 5 }, 'six concurrent adds of one name: one succeeds');
    my $h = index_of('racer');
    is(partner($h)->{name}, 'racer', 'the winner is consistently indexed');
    my @orphans = grep { partner(substr($_, 14))->{name} eq 'racer' }
                  $r->cli('--scan', '--pattern', 'osago:partner:*');
    is(scalar @orphans, 1, 'and no loser left a partner hash behind');
}

# --- validation ----------------------------------------------------------------------------------

my $before = dump_redis($r);
my @usage = (
    [[qw(partner add a:b --rate 1)],     qr/invalid partner name "a:b": character ":" is not allowed/],
    [[qw(partner add a* --rate 1)],      qr/invalid partner name "a\*": character "\*" is not allowed/],
    [['partner', 'add', 'x' x 65, '--rate', 1], qr/invalid partner name "x+": longer than 64/],
    [['partner', 'add', '', '--rate', 1],       qr/invalid partner name "": it must not be empty/],
    [[qw(partner add x --rate 0)],       qr/invalid rate "0": must be from 0\.001 to 1000000/],
    [[qw(partner add x --rate 1.2345)],  qr/invalid rate "1\.2345": at most 3 decimals/],
    [[qw(partner add x --rate 1000000.5)], qr/invalid rate "1000000\.5": must be from 0\.001/],
    [[qw(partner add x --rate -1)],      qr/invalid rate "-1": expected a decimal number/],
    [[qw(partner add x --rate 1e3)],     qr/invalid rate "1e3": expected a decimal number/],
    [[qw(partner add x --rate 5 --burst 0)],       qr/invalid burst "0": must be from 1 to 1000000/],
    [[qw(partner add x --rate 5 --burst 1000001)], qr/invalid burst "1000001": must be from 1/],
    [[qw(partner add x --rate 5 --burst 1.5)],     qr/invalid burst "1\.5": expected a whole number/],
    [['partner', 'add', 'x', '--rate', 5, '--pool', 'a b'], qr/invalid pool label "a b"/],
    [[qw(partner add x --rate 5 --frob 1)],  qr/partner add: unknown option "--frob"/],
    [[qw(partner add x --rate 5 --frob=s3)], qr/partner add: unknown option "--frob"$/m],
    [[qw(partner add x)],                qr/partner add: --rate is required/],
    [[qw(partner add --rate 5)],         qr/partner add: missing partner NAME/],
    [[qw(partner add x y --rate 5)],     qr/partner add: unexpected argument "y"/],
    [[qw(partner add x --rate)],         qr/partner add: option --rate needs a value/],
    [[qw(partner add x --rate 1 --rate 2)], qr/option --rate given more than once/],
    [[qw(partner set acme)],             qr/partner set: nothing to change/],
    [[qw(partner set acme --rate 0)],    qr/invalid rate "0"/],
    [[qw(partner set a:b --rate 1)],     qr/invalid partner name "a:b"/],
    [[qw(partner disable)],              qr/partner disable: missing partner NAME/],
    [[qw(partner rotate-key a*)],        qr/invalid partner name "a\*"/],
    [[qw(partner delete acme extra)],    qr/partner delete: unexpected argument "extra"/],
    [[qw(partner list --json=yes)],      qr/option --json takes no value/],
    [[qw(partner frob)],                 qr/partner: unknown subcommand "frob"/],
    [[qw(partner)],                      qr/partner: missing subcommand/],
    [[qw(frob)],                         qr/unknown command "frob"/],
    [[],                                 qr/missing command/],
    [[qw(--frob partner list)],          qr/unknown option "--frob"/],
    [[qw(--db x partner list)],          qr/invalid database "x"/],
    [[qw(--db 65536 partner list)],      qr/invalid database "65536"/],
);
for my $case (@usage) {
    my ($args, $msg) = @$case;
    my ($c, $o, $e) = ctl(@$args);
    is($c, 2, "usage error, exit 2: @$args");
    like($e, qr/\Aosagoctl: /, "  message prefixed: @$args");
    like($e, $msg, "  specific message: @$args") or diag($e);
    is($o, '', "  nothing on stdout: @$args");
}
($code, $out, $err) = ctl(qw(partner add x --rate 5 --frob=s3cr3t));
unlike($err, qr/s3cr3t/, 'the value of an unknown --opt=value is not echoed (it may be a secret)');
is(dump_redis($r), $before, 'no usage error changed anything in Redis');

($code, $out, $err) = ctl_bare('--redis', 'nocolon', 'partner', 'list');
is($code, 2, 'malformed --redis: exit 2');
like($err, qr/invalid Redis address "nocolon" \(from --redis\)/, 'malformed --redis: message');

# --- set, disable, enable ------------------------------------------------------------------------

($code, $out, $err) = ctl('partner', 'set', 'acme', '--rate', '5');
is($code, 0, 'set --rate: exit 0') or diag($err);
is($out, '', 'set: quiet on stdout');
$p = partner($acme_hash);
is_deeply([@$p{qw(name rate burst pool enabled)}], ['acme', '5', '20', 'default', '1'],
          'set --rate changes the rate only (the burst stays)');

($code) = ctl('partner', 'set', 'acme', '--burst', '9', '--pool', 'gold');
is($code, 0, 'set --burst --pool: exit 0');
$p = partner($acme_hash);
is_deeply([@$p{qw(rate burst pool)}], ['5', '9', 'gold'], 'set --burst --pool');
is(index_of('acme'), $acme_hash, 'set keeps the key');

($code) = ctl('partner', 'set', 'acme', '--rate=0.125');
is($code, 0, '--rate=VALUE form');
is(partner($acme_hash)->{rate}, '0.125', 'rate 0.125');

$before = dump_redis($r);
($code, $out, $err) = ctl('partner', 'set', 'nobody', '--rate', '1');
is($code, 1, 'set on an unknown partner: exit 1');
is($err, qq{osagoctl: no partner named "nobody"\n}, 'set on an unknown partner: message');
is(dump_redis($r), $before, 'and nothing was created');

($code) = ctl('partner', 'disable', 'acme');
is($code, 0, 'disable: exit 0');
is(partner($acme_hash)->{enabled}, '0', 'disable sets enabled=0');
is(index_of('acme'), $acme_hash, 'disable keeps the partner and its key');
($code) = ctl('partner', 'enable', 'acme');
is($code, 0, 'enable: exit 0');
is(partner($acme_hash)->{enabled}, '1', 'enable sets enabled=1');
for my $cmd (qw(enable disable rotate-key delete)) {
    ($code, $out, $err) = ctl('partner', $cmd, 'nobody');
    is($code, 1, "$cmd on an unknown partner: exit 1");
    is($err, qq{osagoctl: no partner named "nobody"\n}, "$cmd on an unknown partner: message");
}

# --- rotate-key ----------------------------------------------------------------------------------

{
    ctl('partner', 'disable', 'beta');
    my $old_hash = sha256_hex($beta_key);
    my $old = partner($old_hash);
    ($code, $out, $err) = ctl('partner', 'rotate-key', 'beta');
    is($code, 0, 'rotate-key: exit 0') or diag($err);
    like($out, qr/\Aosk_[A-Za-z0-9_-]{43}\n\z/, 'rotate-key: stdout is only the new key');
    like($err, qr/\Aosagoctl: [^\n]*shown only once[^\n]*SHA-256[^\n]*\n\z/, 'rotate-key: note');
    chomp(my $new_key = $out);
    isnt($new_key, $beta_key, 'a new key');
    my $new_hash = sha256_hex($new_key);
    is($r->cli('EXISTS', "osago:partner:$old_hash"), '0', 'the old key hash is gone: it stops working');
    is_deeply(partner($new_hash), $old, 'the new hash carries every field over (still disabled)');
    is(index_of('beta'), $new_hash, 'the index points at the new hash');
    unlike(dump_redis($r), qr/\Q$old_hash\E/, 'the old hash is nowhere in Redis');
    $beta_key = $new_key;
}

# --- delete --------------------------------------------------------------------------------------

{
    my $h = index_of('gamma.v2');
    $r->cli('SET', 'osago:rl:partner:gamma.v2', '1700000000000000', 'PX', '60000');
    ($code, $out, $err) = ctl('partner', 'delete', 'gamma.v2');
    is($code, 0, 'delete: exit 0') or diag($err);
    is($r->cli('EXISTS', "osago:partner:$h"), '0', 'delete removes the partner hash');
    is($r->cli('HEXISTS', 'osago:partners', 'gamma.v2'), '0', 'and the index entry');
    is($r->cli('EXISTS', 'osago:rl:partner:gamma.v2'), '0', 'and its GCRA state');
    is(partner($acme_hash)->{name}, 'acme', 'other partners are untouched');
    ($code, $out, $err) = ctl('partner', 'delete', 'gamma.v2');
    is($code, 1, 'delete again: exit 1');
    is($err, qq{osagoctl: no partner named "gamma.v2"\n}, 'delete again: message');
    my $again = add('gamma.v2', '--rate', '1');
    ok(length $again, 'a deleted name can be added again');
}

# --- list ----------------------------------------------------------------------------------------

{
    my %hash = map { $_ => index_of($_) } $r->cli('HKEYS', 'osago:partners');
    my @names = sort keys %hash;

    ($code, $out, $err) = ctl('partner', 'list');
    is($code, 0, 'list: exit 0') or diag($err);
    my @lines = split /\n/, $out;
    is(shift @lines, join("\t", qw(name rate burst pool enabled key_id)), 'list: header');
    is(scalar @lines, scalar @names, 'list: one line per partner');
    is_deeply([map { (split /\t/)[0] } @lines], \@names, 'list: sorted by name');
    my %row = map { my @f = split /\t/; ($f[0] => \@f) } @lines;
    is_deeply($row{acme}, ['acme', '0.125', '9', 'gold', '1', substr($acme_hash, 0, 12)],
              'list: acme row, key id = first 12 hex of the hash');
    is_deeply($row{beta}, ['beta', '0.5', '1', 'premium', '0', substr(sha256_hex($beta_key), 0, 12)],
              'list: beta row (disabled, rotated)');
    unlike($out, qr/\Q$acme_hash\E/, 'list: the full hash is not shown');

    ($code, $out, $err) = ctl('partner', 'list', '--json');
    is($code, 0, 'list --json: exit 0') or diag($err);
    my $j = eval { JSON::PP::decode_json($out) };
    is(ref $j, 'ARRAY', 'list --json: a JSON array') or diag($@ . $out);
    is_deeply([map { $_->{name} } @$j], \@names, 'list --json: every partner, sorted');
    my ($a) = grep { $_->{name} eq 'acme' } @$j;
    is_deeply($a, { name => 'acme', rate => 0.125, burst => 9, pool => 'gold',
                    enabled => JSON::PP::true(), key_id => substr($acme_hash, 0, 12) },
              'list --json: acme');
    my ($b) = grep { $_->{name} eq 'beta' } @$j;
    ok(JSON::PP::is_bool($b->{enabled}) && !$b->{enabled}, 'list --json: enabled is a boolean');
    ok(!ref $b->{rate} && $out =~ /"rate": 0\.5\b/, 'list --json: rate is a number');

    ($code, $out) = ctl('--db', '3', 'partner', 'list');
    is($out, "name\trate\tburst\tpool\tenabled\tkey_id\n", 'list of an empty database: header only');
    ($code, $out) = ctl('--db', '3', 'partner', 'list', '--json');
    is_deeply(JSON::PP::decode_json($out), [], 'list --json of an empty database: []');

    # A value edited by hand in Redis: a tab, an escape sequence, a byte that is not UTF-8
    my $odd_key = add('odd', '--rate', '1');
    $r->cli('HSET', 'osago:partner:' . sha256_hex($odd_key), 'pool', "go\tld\x1b[31m\xff\xc3\xa9");
    ($code, $out) = ctl('partner', 'list');
    my ($odd) = grep { /^odd\t/ } split /\n/, $out;
    is_deeply([ split /\t/, $odd // '', -1 ], [ 'odd', '1', '1', "go?ld?[31m?\xc3\xa9", '1',
                                                 substr(sha256_hex($odd_key), 0, 12) ],
              'list: a tab, an escape and a byte that is not UTF-8 show as "?" (six columns)');
    ($code, $out) = ctl('partner', 'list', '--json');
    my $jo = eval { JSON::PP::decode_json($out) };
    my ($jodd) = grep { $_->{name} eq 'odd' } @{ $jo || [] };
    is(($jodd || {})->{pool}, "go\tld\x1b[31m\x{fffd}\x{e9}",
       'list --json: still JSON; the byte that is not UTF-8 is U+FFFD') or diag $out;
    # Lead bytes a lax decoder takes: beyond U+10FFFF (glibc's mbrtowc decodes up to U+1FFFFF),
    # and an encoded surrogate. No byte of them starts a UTF-8 character: each is a '?' or U+FFFD.
    for my $case ([ "\xf4\x90\x80\x80", 'U+110000' ], [ "\xf7\xbf\xbf\xbf", 'U+1FFFFF' ],
                  [ "\xed\xa0\x80", 'the surrogate U+D800' ]) {
        my ($bytes, $what) = @$case;
        my $n = length $bytes;
        $r->cli('HSET', 'osago:partner:' . sha256_hex($odd_key), 'pool', "a${bytes}b");
        ($code, $out) = ctl('partner', 'list');
        my ($line) = grep { /^odd\t/ } split /\n/, $out;
        is((split /\t/, $line // '', -1)[3], 'a' . '?' x $n . 'b', "list: $what shows as '?' x $n");
        ($code, $out) = ctl('partner', 'list', '--json');
        ok(is_strict_utf8($out), "list --json: $what: the output is UTF-8 (RFC 3629)")
            or diag unpack('H*', $out);
        my $js = eval { JSON::PP::decode_json($out) };
        my ($jp) = grep { $_->{name} eq 'odd' } @{ $js || [] };
        is(($jp || {})->{pool}, "a" . "\x{fffd}" x $n . "b", "list --json: $what is U+FFFD x $n")
            or diag $out;
    }
    ($code) = ctl('partner', 'delete', 'odd');
    is($code, 0, 'the odd partner deleted');
}

# --- a damaged index entry (edited by hand) -----------------------------------------------------

{
    $r->cli('HSET', 'osago:partners', 'ghost', 'feedfacecafe0123');
    ($code, $out, $err) = ctl('partner', 'list');
    like($out, qr/^ghost\t-\t-\t-\t-\tfeedfacecafe$/m, 'list shows a dangling entry with "-" fields');
    ($code, $out) = ctl('partner', 'list', '--json');
    my ($g) = grep { $_->{name} eq 'ghost' } @{ JSON::PP::decode_json($out) };
    is_deeply($g, { name => 'ghost', rate => undef, burst => undef, pool => undef,
                    enabled => undef, key_id => 'feedfacecafe' }, 'list --json: nulls');
    ($code, $out, $err) = ctl('partner', 'disable', 'ghost');
    is($code, 1, 'changing a dangling entry: exit 1');
    like($err, qr/partner "ghost" is listed in osago:partners but its record is missing/,
         'changing a dangling entry: message');
    is($r->cli('EXISTS', 'osago:partner:feedfacecafe0123'), '0', 'no half record is created');
    ($code, $out, $err) = ctl('partner', 'rotate-key', 'ghost');
    is($code, 1, 'rotating a dangling entry: exit 1');
    is($out, '', 'rotating a dangling entry: no key printed');
    ($code) = ctl('partner', 'delete', 'ghost');
    is($code, 0, 'a dangling entry can be deleted');
    is($r->cli('HEXISTS', 'osago:partners', 'ghost'), '0', 'and is gone');
}

# --- options ------------------------------------------------------------------------------------

{
    my $key = add('--rate', '1', '--', '-lead');
    is(partner(index_of('-lead'))->{name}, '-lead', '"--" lets a name start with a dash');
    ($code) = ctl('partner', 'delete', '--', '-lead');
    is($code, 0, 'and delete it the same way');
}

# --- database and environment --------------------------------------------------------------------

{
    ($code, $out, $err) = ctl('--db', '5', 'partner', 'add', 'indb5', '--rate', '1');
    is($code, 0, '--db 5: exit 0') or diag($err);
    is(hgetall($r, 'osago:partner:' . sha256_hex(substr($out, 0, -1)), '-n', 5)->{name}, 'indb5',
       '--db 5 writes into database 5');
    is($r->cli('HEXISTS', 'osago:partners', 'indb5'), '0', 'and not into database 0');

    local $ENV{OSAGO_REDIS} = $r->addr;
    local $ENV{OSAGO_REDIS_DB};
    local $ENV{OSAGO_REDIS_PASSWORD};
    ($code, $out, $err) = ctl_bare('partner', 'list');
    is($code, 0, 'OSAGO_REDIS is the default address') or diag($err);
    like($out, qr/^acme\t/m, 'OSAGO_REDIS: lists database 0');

    $ENV{OSAGO_REDIS_DB} = 5;
    ($code, $out) = ctl_bare('partner', 'list');
    is_deeply([map { (split /\t/)[0] } split /\n/, $out], ['name', 'indb5'],
              'OSAGO_REDIS_DB is the default database');
    ($code, $out) = ctl_bare('--db', '0', 'partner', 'list');
    like($out, qr/^acme\t/m, '--db overrides OSAGO_REDIS_DB');

    $ENV{OSAGO_REDIS} = '127.0.0.1:1';
    ($code, $out, $err) = ctl_bare('--redis', $r->addr, 'partner', 'list');
    is($code, 0, '--redis overrides OSAGO_REDIS') or diag($err);

    $ENV{OSAGO_REDIS} = 'nonsense';
    ($code, $out, $err) = ctl_bare('partner', 'list');
    is($code, 2, 'malformed OSAGO_REDIS: exit 2');
    like($err, qr/invalid Redis address "nonsense" \(from OSAGO_REDIS\)/, 'and says where it came from');
}

# --- password ------------------------------------------------------------------------------------

{
    my $rp = OsagoTest::Redis->new;
    my $pw = 's3cret-pw-0';
    $rp->cli('CONFIG', 'SET', 'requirepass', $pw);
    my @auth = ('--no-auth-warning', '-a', $pw);

    ($code, $out, $err) = ctl_on($rp, 'partner', 'list');
    is($code, 1, 'no password for a protected Redis: exit 1');
    like($err, qr/^osagoctl: Redis at \Q${\ $rp->addr}\E: NOAUTH/, 'no password: message');

    ($code, $out, $err) = ctl_on($rp, '--password', 'bad-pw-123', 'partner', 'list');
    is($code, 1, 'wrong password: exit 1');
    like($err, qr/^osagoctl: cannot authenticate to Redis at \Q${\ $rp->addr}\E: /, 'wrong password: message');
    unlike($err, qr/bad-pw-123/, 'the password is not echoed');

    ($code, $out, $err) = ctl_on($rp, '--password', $pw, 'partner', 'add', 'secure', '--rate', '3');
    is($code, 0, '--password: exit 0') or diag($err);
    chomp $out;
    is(hgetall($rp, 'osago:partner:' . sha256_hex($out), @auth)->{name}, 'secure', '--password: stored');

    local $ENV{OSAGO_REDIS_PASSWORD} = $pw;
    ($code, $out, $err) = ctl_on($rp, 'partner', 'list');
    is($code, 0, 'OSAGO_REDIS_PASSWORD is the default password') or diag($err);
    like($out, qr/^secure\t/m, 'OSAGO_REDIS_PASSWORD: listed');
    $rp->stop;
}

# --- Redis unavailable ---------------------------------------------------------------------------

{
    my $port = OsagoTest::free_port();
    for my $args (['partner', 'list'], ['partner', 'add', 'nowhere', '--rate', '1']) {
        ($code, $out, $err) = ctl_on("127.0.0.1:$port", @$args);
        is($code, 1, "nobody listening: exit 1 (@$args)");
        is($err, "osagoctl: cannot connect to Redis at 127.0.0.1:$port: Connection refused\n",
           "nobody listening: message (@$args)");
        is($out, '', "nobody listening: nothing on stdout (@$args)");
    }

    # An answer that comes too late: Redis, stopped, runs the rotation once it goes on, after
    # osagoctl gave up. The old key is dead by then and the new one was never shown: the message
    # names the new key's id, and rotating again gets a working key.
    my $before = index_of('acme');
    $r->pause;
    ($code, $out, $err) = ctl('partner', 'rotate-key', 'acme');
    $r->resume;
    is($code, 1, 'rotate-key, answer too late: exit 1');
    is($out, '', '  no key printed');
    my ($late_id) = $err =~ /shows key id ([0-9a-f]{12}) for partner "acme"/;
    ok($late_id && $err =~ /'osagoctl partner rotate-key acme' replaces it/,
       '  the message names the new key id and the way back') or diag $err;
    ok(OsagoTest::wait_for(sub { (index_of('acme') // '') ne $before }, 5, 0.05),
       '  Redis applied it once it went on');
    is(substr(index_of('acme') // '', 0, 12), $late_id // 'none', '  with the key id the message named');
    ($code, $out, $err) = ctl('partner', 'rotate-key', 'acme');
    is($code, 0, '  rotating again gets a key') or diag $err;

    # A closed stdout: the write error is reported, the key is saved, rotate-key gets another
    ($code, $out, $err) = OsagoTest::run_cmd('sh', '-c', 'exec "$0" "$@" | head -c0', $BIN,
                                             '--redis', $r->addr, 'partner', 'add', 'piped', '--rate', '1');
    like($err, qr/cannot write the key of partner "piped" to stdout: Broken pipe; it is saved/,
         'stdout closed: osagoctl says the key could not be written, and that it is saved')
        or diag $err;
    ok(defined index_of('piped'), '  and the partner exists');

    # A Redis that accepts but does not answer: the command times out instead of hanging.
    $r->pause;
    my $t = time;
    ($code, $out, $err) = ctl('partner', 'list');
    my $took = time - $t;
    $r->resume;
    is($code, 1, 'Redis not answering: exit 1');
    like($err, qr/^osagoctl: Redis at \Q${\ $r->addr}\E: no answer within 2 s$/, 'Redis not answering: message');
    ok($took < 6, 'Redis not answering: gives up after the timeout') or diag("took $took s");

    $r->stop;
    ($code, $out, $err) = ctl('partner', 'rotate-key', 'acme');
    is($code, 1, 'Redis stopped: rotate-key exits 1');
    is($out, '', 'Redis stopped: no key printed');
    like($err, qr/^osagoctl: cannot connect to Redis at \Q${\ $r->addr}\E: Connection refused$/,
         'Redis stopped: message');
}

is_deeply(\@sanitizer_reports, [], 'no AddressSanitizer/UBSan/LeakSanitizer report from any run');

done_testing();
