{ ... }: {
  services.openssh.enable = true;
}
