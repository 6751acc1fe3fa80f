#!/usr/bin/env python3
"""Signs an HBR AddDataSource request with the official Alibaba Cloud Python SDK, for
tests/sdk_signature.rs. Input (JSON on stdin): signature "v3"|"v2", endpoint host, access key
id/secret, optional security_token, fixed nonce and timestamp, and the AddDataSource fields.
The real hbr20170908 client builds the request (its own Path.N flattening, headers, query);
the transport is replaced by a capture, the nonce and clock by the fixed inputs.
Output (JSON on stdout): the captured query and headers, and for V3 the SDK signer's canonical
request and Authorization over the headers the agent signs (host, x-acs-*).
Exit 3 with a hint when the SDK is not installed."""
import json
import sys

try:
    from alibabacloud_tea_openapi import utils as openapi_utils
    from alibabacloud_tea_openapi.utils import Utils
    from alibabacloud_tea_openapi.utils_models import Config
    from darabonba.core import DaraCore
    from darabonba.runtime import RuntimeOptions
    from alibabacloud_hbr20170908.client import Client
    from alibabacloud_hbr20170908 import models
except ImportError as e:
    print(f"missing Python module ({e}): pip install alibabacloud-tea-openapi alibabacloud-hbr20170908",
          file=sys.stderr)
    sys.exit(3)


class Captured(Exception):
    pass


def main():
    inp = json.load(sys.stdin)
    captured = {}

    def do_action(request, runtime=None):
        captured["request"] = request
        raise Captured()

    DaraCore.do_action = staticmethod(do_action)
    Utils.get_nonce = staticmethod(lambda: inp["nonce"])
    Utils.get_timestamp = staticmethod(lambda: inp["timestamp"])

    cfg = Config(
        access_key_id=inp["access_key_id"],
        access_key_secret=inp["access_key_secret"],
        security_token=inp.get("security_token"),
        endpoint=inp["host"],
        region_id="cn-hangzhou",
    )
    if inp["signature"] == "v2":
        cfg.signature_algorithm = "v2"
    client = Client(cfg)
    r = inp["request"]
    req = models.AddDataSourceRequest(
        cluster_id=r["ClusterId"],
        data_source_type=r["DataSourceType"],
        data_source_name=r["DataSourceName"],
        connection_info=r["ConnectionInfo"],
        credential=r["Credential"],
        path=r["Path"],
        include=r["Include"],
        index_level=r["IndexLevel"],
        schedule=r["Schedule"],
        speed_limit=r["SpeedLimit"],
    )
    try:
        client.add_data_source_with_options(req, RuntimeOptions())
    except Exception:
        pass
    request = captured.get("request")
    if request is None:
        print("the SDK did not reach its transport", file=sys.stderr)
        sys.exit(2)

    headers = {k.lower(): str(v) for k, v in request.headers.items()}
    out = {
        "method": request.method,
        "pathname": request.pathname,
        "query": {k: str(v) for k, v in request.query.items() if v is not None},
        "headers": headers,
    }
    if inp["signature"] == "v3":
        # The SDK signs every header it sends (also user-agent and accept); the agent signs host
        # and x-acs-* as the V3 spec requires. Sign that set with the SDK's own signer, leaving
        # out x-acs-credentials-provider (SDK telemetry the agent does not send).
        signed = {k: v for k, v in headers.items()
                  if (k == "host" or k.startswith("x-acs-") or k == "content-type")
                  and k != "x-acs-credentials-provider"}

        class Req:
            pass

        sub = Req()
        sub.method = request.method
        sub.pathname = request.pathname
        sub.query = request.query
        sub.headers = signed
        payload = headers["x-acs-content-sha256"]
        canon_headers, signed_names = openapi_utils.get_canonicalized_headers(signed)
        out["canonical"] = (f"{sub.method}\n{sub.pathname or '/'}\n"
                            f"{openapi_utils.get_canonical_query_string(sub.query)}\n"
                            f"{canon_headers}\n{signed_names}\n{payload}")
        out["authorization"] = Utils.get_authorization(
            sub, "ACS3-HMAC-SHA256", payload, inp["access_key_id"], inp["access_key_secret"])
        out["sdk_authorization"] = headers.get("authorization")
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
