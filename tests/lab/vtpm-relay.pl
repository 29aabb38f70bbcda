#!/usr/bin/perl
# The device lab's TPM, run inside the arm64 guest by tests/lab/scenario.sh: the kernel's vTPM
# proxy (tpm_vtpm_proxy) makes /dev/tpm0 and its resource manager /dev/tpmrm0 for a TPM 2.0
# whose commands this relay carries to swtpm on the host (the simulator protocol, through QEMU's
# guestfwd). Debian 12's arm64 kernel has no driver for QEMU's tpm-tis-device (CONFIG_TCG_TIS
# is not set), so the kernel's TPM stack is reached this way; everything above the chip (the
# resource manager, the character devices, udev, permissions) is the kernel's own.
#   perl vtpm-relay.pl HOST PORT
use strict;
use warnings;
use IO::Socket::INET;

my ($host, $port) = @ARGV;
$| = 1;
# struct vtpm_proxy_new_dev { u32 flags, tpm_num, fd, major, minor }; VTPM_PROXY_FLAG_TPM2 = 1;
# VTPM_PROXY_IOC_NEW_DEV = _IOWR(0xa1, 0x00, struct vtpm_proxy_new_dev).
open(my $vtpmx, '+<', '/dev/vtpmx') or die "/dev/vtpmx: $!\n";
my $dev = pack('L5', 1, 0, 0, 0, 0);
ioctl($vtpmx, 0xC014A100, $dev) or die "VTPM_PROXY_IOC_NEW_DEV: $!\n";
my (undef, $num, $fd) = unpack('L5', $dev);
open(my $tpm, '+<&=', $fd) or die "fd $fd: $!\n";
my $swtpm = IO::Socket::INET->new(PeerAddr => $host, PeerPort => $port, Proto => 'tcp')
  or die "swtpm at $host:$port: $!\n";
print "vTPM proxy: /dev/tpm$num, relayed to $host:$port\n";

sub exact {
  my ($fh, $n) = @_;
  my $buf = '';
  while (length($buf) < $n) {
    my $got = sysread($fh, $buf, $n - length($buf), length($buf));
    die "swtpm closed the connection\n" unless $got;
  }
  return $buf;
}

my $commands = 0;
while (1) {
  my $cmd;
  my $n = sysread($tpm, $cmd, 4096);
  last unless $n;
  my $code = length($cmd) >= 10 ? unpack('N', substr($cmd, 6, 4)) : 0;
  my $response;
  if ($code == 0x20001000) {
    # TPM2_CC_SET_LOCALITY, the proxy's own command: one locality here.
    $response = pack('nNN', 0x8001, 10, 0);
  } else {
    syswrite($swtpm, pack('NCN', 8, 0, length($cmd)) . $cmd);
    my $len = unpack('N', exact($swtpm, 4));
    $response = exact($swtpm, $len);
    exact($swtpm, 4);
  }
  syswrite($tpm, $response);
  $commands++;
}
print "vTPM proxy closed after $commands commands\n";
