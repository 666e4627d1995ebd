"""``architect operator``: run the admission webhooks and the control plane."""

from __future__ import annotations

import asyncio
import logging
import sys

from architect.engine import config


def main(argv: list[str] | None = None) -> int:
    args = config.parser().parse_args(argv)
    if bool(args.tls_cert) != bool(args.tls_key):
        print("architect operator: --tls-cert and --tls-key go together", file=sys.stderr)
        return 2
    if not args.tls_cert:
        # kopf would try to make its own certificate and fail with a traceback.
        print(
            "architect operator: --tls-cert and --tls-key are required: the API server "
            "calls the webhooks over TLS",
            file=sys.stderr,
        )
        return 2
    cfg = config.from_args(args)
    import kopf

    from architect.engine import operator

    operator.CONFIG = cfg
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    asyncio.run(kopf.operator(clusterwide=True, standalone=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
