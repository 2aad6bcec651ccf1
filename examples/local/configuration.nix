{ ... }: {
  imports = [ ./modules/ssh.nix ];
  fileSystems."/" = { device = "/dev/sda1"; };
  boot.loader.systemd-boot.enable = true;
}
