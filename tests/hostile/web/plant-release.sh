# What a build step leaves in its release for the platform to copy (a promote, every start's fresh copy):
# a link to the platform's secret key, a setuid program, a FIFO that would block a reader.
ln -sf "$P_DATA/secret_key" secret-link
cp /bin/sh setuid-sh && chmod 4755 setuid-sh
mkfifo blocking-fifo
echo "release planted"
