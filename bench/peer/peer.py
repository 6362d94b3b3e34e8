"""The peer: what keyrotor replaces, as small as it can be, for the benchmark.

The old design ran the Azure CLI (299.41 MB container) with its DevOps extension, which is built on
the `azure-devops` Python SDK. Per run it: created a new IAM access key, stored it in Secrets
Manager, deleted the old key, DELETED the Azure DevOps service connection and CREATED it again
(new id: pipeline authorizations and checks are lost), and posted to a webhook. This script does
exactly that with boto3, the azure-devops SDK's request shapes, and requests — no CLI, so it is a
lower bound on the old design's cost.

    python3 peer.py --setup            creates the pinned virtualenv (once), prints its python
    <venv python> peer.py --org-url … --project … --endpoint … --user … --secret …

ADO modes (--ado):
  requests     the three calls the SDK's ServiceEndpointClient makes (GET by name, DELETE, POST;
               same URLs, api-version 7.1-preview.4 in the Accept header, Basic auth with the PAT,
               X-TFS-FedAuthRedirect: Suppress), sent with `requests`. The SDK is imported too,
               as the old process loaded it.
  sdk-primed   the SDK's own ServiceEndpointClient, its location cache primed with the route that
               Azure DevOps' `OPTIONS /_apis` answers for resource 14e48fdc-… / e85f1c62-…
               (the emulator has no OPTIONS /_apis and no /_apis/ResourceAreas).
  sdk          the SDK as the CLI uses it: Connection(...).clients_v7_1.get_service_endpoint_client()
               (discovery included). Fails against the emulator; kept to show how.

Never prints a secret: only ids, and key ids masked.
"""

import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
API_VERSION = "7.1-preview.4"


def venv_dir():
    with open(os.path.join(HERE, "requirements.txt"), "rb") as f:
        import hashlib

        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    home = os.environ.get("HOME") or "/tmp"
    return os.path.join(home, ".cache", "keyrotor", f"bench-peer-{digest}")


def setup():
    venv = venv_dir()
    py = os.path.join(venv, "bin", "python")
    check = [py, "-c", "import boto3, requests, azure.devops.connection"]
    if os.path.exists(py) and subprocess.run(check, capture_output=True).returncode == 0:
        print(py)
        return
    print(f"peer: creating {venv} (pinned: bench/peer/requirements.txt)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", "--clear", venv], check=True)
    subprocess.run(
        [py, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "-r", os.path.join(HERE, "requirements.txt")],
        check=True, stdout=subprocess.DEVNULL,
    )
    subprocess.run(check, check=True)
    print(py)


def masked(key_id):
    return f"{key_id[:4]}…{key_id[-4:]}"


def arg(name, default=None):
    argv = sys.argv
    if name in argv:
        return argv[argv.index(name) + 1]
    if default is None:
        sys.exit(f"peer: {name} is required")
    return default


# The ApiResourceLocation records Azure DevOps Services answers to `OPTIONS {org}/_apis` for the
# two service-endpoint resources the old design used (area `serviceendpoint`, resource
# `endpoints`), as the SDK's ApiResourceLocation model holds them.
LOCATIONS = [
    {"id": "14e48fdc-2c8b-41ce-a0c3-e26f6cc55bd0", "area": "serviceendpoint",
     "resourceName": "endpoints", "routeTemplate": "_apis/{area}/{resource}/{endpointId}",
     "resourceVersion": 4, "minVersion": "5.0", "maxVersion": "7.2", "releasedVersion": "0.0"},
    {"id": "e85f1c62-adfc-4b74-b618-11a150fb195e", "area": "serviceendpoint",
     "resourceName": "endpoints", "routeTemplate": "{project}/_apis/{area}/{resource}/{endpointId}",
     "resourceVersion": 4, "minVersion": "5.0", "maxVersion": "7.2", "releasedVersion": "0.0"},
]


class RequestsAdo:
    """The SDK's three requests, sent with requests."""

    def __init__(self, org_url, pat):
        import requests

        self.org = org_url.rstrip("/")
        self.s = requests.Session()
        self.s.auth = ("", pat)
        self.s.headers.update({
            "Accept": f"application/json;api-version={API_VERSION}",
            "Content-Type": "application/json; charset=utf-8",
            "X-TFS-FedAuthRedirect": "Suppress",
        })

    def _check(self, r):
        if r.status_code < 200 or r.status_code >= 300:
            raise RuntimeError(f"ADO {r.request.method} answered {r.status_code}")
        return r

    def find(self, project, name):
        r = self._check(self.s.get(f"{self.org}/{project}/_apis/serviceendpoint/endpoints",
                                   params={"endpointNames": name}))
        found = r.json()["value"]
        if len(found) != 1:
            raise RuntimeError(f"{len(found)} endpoints named {name}")
        return found[0]

    def delete(self, endpoint_id, project_ids):
        self._check(self.s.delete(f"{self.org}/_apis/serviceendpoint/endpoints/{endpoint_id}",
                                  params={"projectIds": ",".join(project_ids)}))

    def create(self, endpoint):
        r = self._check(self.s.post(f"{self.org}/_apis/serviceendpoint/endpoints",
                                    data=json.dumps(endpoint)))
        return r.json()


class SdkAdo:
    """The azure-devops SDK's ServiceEndpointClient."""

    def __init__(self, org_url, pat, primed):
        from azure.devops.client import Client
        from azure.devops.connection import Connection
        from azure.devops.v7_1.service_endpoint import ServiceEndpointClient
        from msrest.authentication import BasicAuthentication

        creds = BasicAuthentication("", pat)
        if primed:
            self.c = ServiceEndpointClient(base_url=org_url, creds=creds)
            self.c._suppress_fedauth_redirect = True
            locations = self.c._base_deserialize.deserialize_data(LOCATIONS, "[ApiResourceLocation]")
            Client._locations_cache[self.c.normalized_url] = locations
        else:
            conn = Connection(base_url=org_url, creds=creds)
            self.c = conn.clients_v7_1.get_service_endpoint_client()

    def find(self, project, name):
        found = self.c.get_service_endpoints_by_names(project, [name])
        if len(found) != 1:
            raise RuntimeError(f"{len(found)} endpoints named {name}")
        return found[0].serialize(keep_readonly=True)

    def delete(self, endpoint_id, project_ids):
        self.c.delete_service_endpoint(endpoint_id, project_ids)

    def create(self, endpoint):
        from azure.devops.v7_1.service_endpoint.models import ServiceEndpoint

        return self.c.create_service_endpoint(ServiceEndpoint.deserialize(endpoint)).serialize(
            keep_readonly=True)


def main():
    if "--setup" in sys.argv:
        setup()
        return
    t0 = time.monotonic()
    import boto3
    import requests
    import azure.devops.connection  # noqa: F401  (the old process loaded the SDK)
    import azure.devops.v7_1.service_endpoint  # noqa: F401

    t_import = time.monotonic() - t0
    org_url, project, name = arg("--org-url"), arg("--project"), arg("--endpoint")
    user, secret_id = arg("--user"), arg("--secret")
    mode = arg("--ado", "requests")

    ssm = boto3.client("ssm")
    pat = ssm.get_parameter(Name=arg("--pat-param"), WithDecryption=True)["Parameter"]["Value"]
    webhook = ssm.get_parameter(Name=arg("--webhook-param"), WithDecryption=True)["Parameter"]["Value"]

    iam = boto3.client("iam")
    sm = boto3.client("secretsmanager")
    old = [k["AccessKeyId"] for k in iam.list_access_keys(UserName=user)["AccessKeyMetadata"]]
    new = iam.create_access_key(UserName=user)["AccessKey"]
    sm.put_secret_value(SecretId=secret_id, SecretString=json.dumps({
        "AccessKeyId": new["AccessKeyId"], "SecretAccessKey": new["SecretAccessKey"],
        "UserName": user}))
    for k in old:
        iam.delete_access_key(UserName=user, AccessKeyId=k)

    ado = RequestsAdo(org_url, pat) if mode == "requests" else SdkAdo(org_url, pat, mode == "sdk-primed")
    ep = ado.find(project, name)
    old_id = ep["id"]
    project_ids = [r["projectReference"]["id"] for r in ep.get("serviceEndpointProjectReferences", [])]
    ado.delete(old_id, project_ids)
    ep.pop("id", None)
    params = ep["authorization"]["parameters"]
    params["username"] = new["AccessKeyId"]
    params["password"] = new["SecretAccessKey"]
    created = ado.create(ep)

    r = requests.post(webhook, json={"text": f"Rotated the key of {user}: {masked(new['AccessKeyId'])}"})
    print(json.dumps({
        "old_keys": [masked(k) for k in old], "new_key": masked(new["AccessKeyId"]),
        "old_endpoint_id": old_id, "new_endpoint_id": created.get("id"),
        "webhook_status": r.status_code, "import_seconds": round(t_import, 4), "ado": mode,
    }))


if __name__ == "__main__":
    main()
