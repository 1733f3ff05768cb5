"""``make bench``: QueryService latency with analytics off, in the background
and blocking, beside a bare grpc.aio echo server, under the same open-loop
load, side by side in one run."""
