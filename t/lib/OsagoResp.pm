package OsagoResp;

# A Redis connection for the tests, binary safe (RESP by hand: no Redis client is packaged for
# Perl in Debian). Replies come back as Perl data: arrays as array refs, errors as { error => }.
#
#   my $c = OsagoResp->new($redis);        # an OsagoTest::Redis
#   $c->cmd('HSET', $key, 'doc', $bytes);   # one command, its reply
#   $c->pipeline([..], [..]);              # several, their replies
#   $c->send([..]); ...; $c->replies;       # write now, read later (a Redis held with SIGSTOP)

use strict;
use warnings;
use Carp qw(croak);
use IO::Select;
use IO::Socket::IP;

sub new {
    my ($class, $redis) = @_;
    my $s = IO::Socket::IP->new(PeerHost => '127.0.0.1', PeerPort => $redis->port, Proto => 'tcp',
                                Timeout => 3) or croak "redis: connect: $!";
    binmode $s;
    $s->autoflush(1);
    return bless { s => $s, buf => '', sel => IO::Select->new($s) }, $class;
}

sub _read {
    my ($self, $want) = @_;
    while (1) {
        if (defined $want) {
            return substr($self->{buf}, 0, $want, '') if length $self->{buf} >= $want;
        } elsif ($self->{buf} =~ s/^(.*?)\r\n//s) {
            return $1;
        }
        $self->{sel}->can_read(5) or croak 'redis: timeout';
        sysread($self->{s}, $self->{buf}, 65536, length $self->{buf}) or croak 'redis: closed';
    }
}

sub _parse {
    my ($self) = @_;
    my $line = $self->_read(undef);
    my ($t, $rest) = (substr($line, 0, 1), substr($line, 1));
    return $rest if $t eq '+';
    return { error => $rest } if $t eq '-';
    return $rest + 0 if $t eq ':';
    if ($t eq '$') {
        return undef if $rest < 0;
        return substr($self->_read($rest + 2), 0, $rest);
    }
    if ($t eq '*') {
        return undef if $rest < 0;
        return [ map { $self->_parse } 1 .. $rest ];
    }
    croak "redis: unexpected reply '$line'";
}

sub _encode { my $o = '*' . @_ . "\r\n"; $o .= '$' . length($_) . "\r\n$_\r\n" for @_; $o }

# cmd(@args) -> reply
sub cmd {
    my ($self, @cmd) = @_;
    print { $self->{s} } _encode(@cmd);
    return $self->_parse;
}

# pipeline([cmd], [cmd], ...) -> [replies]
sub pipeline {
    my ($self, @cmds) = @_;
    print { $self->{s} } join '', map { _encode(@$_) } @cmds;
    return [ map { $self->_parse } @cmds ];
}

# send([cmd], ...): write commands without waiting for their replies (e.g. to a Redis that is
# held with SIGSTOP); replies(N) reads N replies later.
sub send {
    my ($self, @cmds) = @_;
    print { $self->{s} } join '', map { _encode(@$_) } @cmds;
    $self->{owed} += @cmds;
    return scalar @cmds;
}

sub replies {
    my ($self, $count) = @_;
    $count //= $self->{owed} // 0;
    $self->{owed} -= $count;
    return [ map { $self->_parse } 1 .. $count ];
}

sub disconnect { my ($self) = @_; CORE::close($self->{s}) if $self->{s}; delete $self->{s} }

1;
