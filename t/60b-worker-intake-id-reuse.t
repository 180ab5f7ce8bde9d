#!/usr/bin/perl
# A stream entry that repeats a stored application's id: from another partner with another
# payload, and twice within one batch. The edge never does this (it makes every id); anything
# else that writes the stream might. The stored application is what every Created carries, so
# the insurers quote the row that results completes, and no entry can put its payload under
# another partner's id. Each repeat is named in the log and acknowledged; nothing is quoted twice.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use JSON::PP ();
use OsagoTest;
use OsagoStack;

OsagoStack::need_bins(qw(devbroker insurer-sim osago-worker));

my $J = JSON::PP->new->utf8->canonical;
my @CODES = qw(alfa ingos);
my $pg  = OsagoStack::Postgres->new;
my $r   = OsagoTest::Redis->new;
my $kb  = OsagoStack::Devbroker->new;
my $sim = OsagoStack::InsurerSim->new(insurers => \@CODES, latency => '10-20');
my $w   = OsagoStack::Worker->new(pg => $pg, redis => $r, kafka => $kb, insurers => $sim,
                                  migrate => 1, name => 'reuse-1');

sub reuses_of {
    my ($id) = @_;
    return grep { ($_->{event} // '') eq 'intake_id_reused' && ($_->{msg} // '') =~ /\Q$id\E/ }
           @{ $w->log_lines };
}

sub created_for {
    my ($id) = @_;
    return grep { ($_->{event}{application_id} // '') eq $id }
           @{ OsagoStack::kafka_messages($kb, 'osago.application.created') };
}

sub tasks_for {
    my ($id) = @_;
    return grep { ($_->{event}{application_id} // '') eq $id }
           @{ OsagoStack::kafka_messages($kb, 'osago.application.task') };
}

# --- another partner's entry under a stored id ---------------------------------------------------
my $own = OsagoStack::canonical_payload(vehicle => { power_hp => 90 });
my ($x) = OsagoStack::intake_entry($r, partner => 'acme', payload => $own);
ok(OsagoStack::wait_completed($pg, [$x], 30), "application $x completed");
my $quotes_before = $J->encode(OsagoStack::quotes_of($pg, [$x]));

my $rival = OsagoStack::canonical_payload(vehicle => { power_hp => 300 });
my $entry = OsagoStack::raw_entry($r, app_id => $x, partner => 'rival', payload => $rival,
                                  trace => OsagoStack::traceparent());
ok(OsagoStack::wait_until(sub { reuses_of($x) && OsagoStack::pending_count($r) == 0 }, 15, 0.1),
   'the repeat is named in the log (intake_id_reused) and acknowledged')
    or diag explain [ grep { ($_->{level} // '') =~ /warn|error/ } @{ $w->log_lines } ];
like(join("\n", map { $_->{msg} } reuses_of($x)), qr/entry \Q$entry\E repeats application \Q$x\E/,
     '  naming the entry and the application');

my @created = created_for($x);
is(scalar @created, 2, 'two Created events for the id');
my @foreign = grep { $_->{event}{data}{partner} ne 'acme'
                     || $J->encode($_->{event}{data}{payload}) ne $J->encode($J->decode($own)) }
              @created;
is(scalar @foreign, 0, "both carry the stored application: partner acme and its own payload")
    or diag explain [ map { $_->{event}{data} } @foreign ];
my $app = OsagoStack::application($pg, $x);
is($app->{partner}, 'acme', 'the row keeps its partner');
is($J->encode($app->{payload}), $J->encode($J->decode($own)), 'and its payload');
is(scalar(tasks_for($x)), scalar @CODES, 'one task per insurer, none again');
is($J->encode(OsagoStack::quotes_of($pg, [$x])), $quotes_before, 'its quotes are unchanged');

# --- one id twice in one batch ---------------------------------------------------------------------
# One MULTI/EXEC: the relay, blocked on the stream, reads both entries at once.
my $y = OsagoStack::uuid7();
my @payloads = map { OsagoStack::canonical_payload(vehicle => { power_hp => $_ }) } 110, 220;
my $replies = OsagoStack::resp_pipeline($r, [ 'MULTI' ],
    (map { [ 'XADD', 'osago:intake', '*', 'app_id', $y, 'partner', 'acme', 'payload', $_,
             'trace', OsagoStack::traceparent() ] } @payloads),
    [ 'EXEC' ]);
is(ref $replies->[-1], 'ARRAY', 'two entries for one id added in one transaction');
ok(OsagoStack::wait_completed($pg, [$y], 30), "application $y completed");
ok(OsagoStack::wait_until(sub { OsagoStack::pending_count($r) == 0 && reuses_of($y) }, 10, 0.1),
   'both entries acknowledged, one named as a repeat');
is(scalar(reuses_of($y)), 1, '  once');
my $stored = $J->encode(OsagoStack::application($pg, $y)->{payload});
ok((grep { $stored eq $J->encode($J->decode($_)) } @payloads), 'the row holds one of the payloads');
my @carried = map { $J->encode($_->{event}{data}{payload}) } created_for($y);
is_deeply(\@carried, [ $stored, $stored ], 'both Created events carry the stored payload');
# Each Created announces the tasks of quotes not yet answered (a redelivery's duty); the
# executor's claim takes each quote once.
my @tasks = tasks_for($y);
is(scalar(grep { $J->encode($_->{event}{data}{payload}) ne $stored } @tasks), 0,
   sprintf('all %d tasks carry the stored payload', scalar @tasks));
my $qy = OsagoStack::quotes_of($pg, [$y])->{$y};
is(join(',', map { "$_:$qy->{$_}{status}/$qy->{$_}{attempt}" } sort keys %$qy),
   join(',', map { "$_:ok/1" } sort @CODES), 'each insurer quoted once, on the first attempt');

# --- a stored id's copy and another partner's entry in one batch ----------------------------------
# Each is compared with the row as itself: only the rival is named, and neither carries its own.
my $before = () = reuses_of($x);
$replies = OsagoStack::resp_pipeline($r, [ 'MULTI' ],
    [ 'XADD', 'osago:intake', '*', 'app_id', $x, 'partner', 'rival', 'payload', $rival,
      'trace', OsagoStack::traceparent() ],
    [ 'XADD', 'osago:intake', '*', 'app_id', $x, 'partner', 'acme', 'payload', $own,
      'trace', OsagoStack::traceparent() ],
    [ 'EXEC' ]);
my ($rival_entry, $copy_entry) = @{ $replies->[-1] || [] };
ok(OsagoStack::wait_until(sub { OsagoStack::pending_count($r) == 0 && reuses_of($x) > $before },
                          10, 0.1), 'the rival entry and the copy are acknowledged');
my @named = map { $_->{msg} } (reuses_of($x))[ $before .. scalar(reuses_of($x)) - 1 ];
is(scalar @named, 1, '  one repeat named');
like($named[0] // '', qr/entry \Q$rival_entry\E /, '  the rival entry, not the copy');
@created = created_for($x);
is(scalar @created, 4, 'four Created events for the id in all');
is(scalar(grep { $_->{event}{data}{partner} ne 'acme'
                 || $J->encode($_->{event}{data}{payload}) ne $J->encode($J->decode($own)) }
          @created), 0, '  every one carrying the stored application');
my ($trace_x) = $pg->psql("SELECT trace FROM applications WHERE id = '$x'");
is_deeply([ map { $_->{event}{traceparent} } @created ], [ ($trace_x) x 4 ],
          '  and its trace');

OsagoStack::check_all_done($pg, $r, [ $x, $y ], \@CODES);
$w->stop;
done_testing;
