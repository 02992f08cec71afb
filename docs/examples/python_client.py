#!/usr/bin/env python3
"""Send one batch to a monitor server from Python (grpcio), over mutual TLS.

For a device that cannot run monitor-agent but can speak gRPC. Where the
server runs, an operator makes the device's key and certificate:

    monitorctl enrol lab-sensor --files ./lab-sensor

which writes lab-sensor.key (the private key: copy it to the device over a
secure channel), lab-sensor.pem (its certificate) and ca.pem (the server's
CA). Then, on the device:

    pip install grpcio grpcio-tools
    python3 python_client.py --server monitor.example.org:50051 \\
        --hostname lab-sensor --files ./lab-sensor

The Python stubs are generated from proto/monitor.proto (the contract, with
every rule the server checks written next to its field) into a temporary
directory at run time, so nothing generated is kept in the repository.

The server takes the device's identity from its certificate: the batch must
name the certificate's hostname (else PERMISSION_DENIED). The server name
in --server must be one the server's certificate carries (its hostname,
localhost, 127.0.0.1 or ::1 unless it was started with --tls-name).

Prints the server's acknowledgement; exits 0 when the batch was stored,
1 when it was refused, 2 on a usage error.
"""

import argparse
import os
import random
import sys
import tempfile
import time

import grpc
from grpc_tools import protoc

# The repository's proto, relative to this file (docs/examples/).
DEFAULT_PROTO = os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "proto", "monitor.proto"
)


def load_stubs(proto_path, out_dir):
    """Generates monitor_pb2 and monitor_pb2_grpc into out_dir; imports them."""
    proto_dir = os.path.dirname(os.path.abspath(proto_path))
    # grpc_tools ships the well-known types' .proto files (none are used
    # today, but a newer contract may import them).
    well_known = os.path.join(os.path.dirname(protoc.__file__), "_proto")
    code = protoc.main(
        [
            "grpc_tools.protoc",
            "-I" + proto_dir,
            "-I" + well_known,
            "--python_out=" + out_dir,
            "--grpc_python_out=" + out_dir,
            os.path.basename(proto_path),
        ]
    )
    if code != 0:
        sys.exit("cannot compile %s (protoc exit %d)" % (proto_path, code))
    sys.path.insert(0, out_dir)
    import monitor_pb2  # noqa: E402 (generated just now)
    import monitor_pb2_grpc  # noqa: E402

    return monitor_pb2, monitor_pb2_grpc


def read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        sys.exit("cannot read %s: %s" % (path, e.strerror))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--server", required=True, help="the agents' listener, HOST:PORT"
    )
    parser.add_argument(
        "--hostname", required=True, help="the name the certificate was made for"
    )
    parser.add_argument(
        "--files",
        required=True,
        help="the directory 'monitorctl enrol HOSTNAME --files DIR' wrote",
    )
    parser.add_argument("--metric", default="cpu_percent")
    parser.add_argument("--value", type=float, default=12.5)
    parser.add_argument("--proto", default=DEFAULT_PROTO, help="path to monitor.proto")
    args = parser.parse_args()

    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(os.path.join(args.files, "ca.pem")),
        private_key=read(os.path.join(args.files, args.hostname + ".key")),
        certificate_chain=read(os.path.join(args.files, args.hostname + ".pem")),
    )
    with tempfile.TemporaryDirectory(prefix="monitor-stubs-") as out_dir:
        pb, rpc = load_stubs(args.proto, out_dir)
        now_ms = int(time.time() * 1000)
        batch = pb.Batch(
            agent_id=args.hostname,
            # A new run of this client: sequence numbers start at 1 again.
            boot_id=random.getrandbits(64),
            seq=1,
            samples=[
                pb.Sample(
                    time_unix_ms=now_ms,
                    hostname=args.hostname,
                    metric=args.metric,
                    value=args.value,
                )
            ],
            sent_unix_ms=now_ms,
            agent_version="python-example",
            hostname=args.hostname,
            produced_batches_total=1,
        )
        with grpc.secure_channel(args.server, credentials) as channel:
            stub = rpc.CollectorStub(channel)
            try:
                # Report is a bidirectional stream: one Ack per Batch,
                # sent once the batch is durably stored (or refused).
                for ack in stub.Report(iter([batch]), timeout=30):
                    code = pb.AckCode.Name(ack.code)
                    print(
                        "ack: seq=%d code=%s message=%r server_unix_ms=%d"
                        % (ack.seq, code, ack.message, ack.server_unix_ms)
                    )
                    return 0 if ack.code == pb.ACK_CODE_OK else 1
            except grpc.RpcError as e:
                sys.exit("%s: %s: %s" % (args.server, e.code().name, e.details()))
    sys.exit("the server closed the stream without an acknowledgement")


if __name__ == "__main__":
    sys.exit(main())
