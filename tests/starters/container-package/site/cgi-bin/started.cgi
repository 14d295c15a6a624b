#!/bin/sh
printf 'Content-Type: text/plain\r\n\r\n'
cat /tmp/started
