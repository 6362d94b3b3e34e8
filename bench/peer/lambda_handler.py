"""The cold-start peer: a Python 3 Lambda function the old design would have been, as a minimal
custom runtime (the loop AWS's Python runtime runs, without its own start-up cost, so this is a
lower bound). Init imports boto3 and azure.devops and builds an SSM client, as a handler module
does at import; each invocation reads the config parameter (what keyrotor's `targets` step
does) and answers with the number of `[[target]]` tables in it.

    AWS_LAMBDA_RUNTIME_API=127.0.0.1:PORT KEYROTOR_CONFIG_PARAMETER=/keyrotor/config \
        <bench-peer venv python> lambda_handler.py
"""

import json
import os
import urllib.request

import boto3
import azure.devops.connection  # noqa: F401
import azure.devops.v7_1.service_endpoint  # noqa: F401

SSM = boto3.client("ssm")
API = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2018-06-01/runtime/invocation/"


def handler(event):
    text = SSM.get_parameter(Name=os.environ["KEYROTOR_CONFIG_PARAMETER"])["Parameter"]["Value"]
    return {"targets": text.count("[[target]]"), "step": event.get("step")}


def main():
    while True:
        with urllib.request.urlopen(API + "next") as r:
            request_id = r.headers["Lambda-Runtime-Aws-Request-Id"]
            event = json.loads(r.read())
        body = json.dumps(handler(event)).encode()
        req = urllib.request.Request(API + request_id + "/response", data=body, method="POST")
        urllib.request.urlopen(req).read()


if __name__ == "__main__":
    main()
