mod systemd;
