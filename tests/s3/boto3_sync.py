"""Syncs a tree up to the Cairn S3 gateway and back down with boto3, and
compares checksums (run by tests/tests/s3_interop.rs).

usage: boto3_sync.py ENDPOINT ACCESS_KEY SECRET_KEY WORKDIR
"""
import hashlib
import os
import random
import sys
import urllib.request

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config

endpoint, access_key, secret_key, workdir = sys.argv[1:5]
s3 = boto3.client(
    "s3",
    endpoint_url=endpoint,
    aws_access_key_id=access_key,
    aws_secret_access_key=secret_key,
    region_name="us-east-1",
    config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
)
transfer = TransferConfig(multipart_threshold=8 << 20, multipart_chunksize=8 << 20, max_concurrency=4)

up = os.path.join(workdir, "up")
down = os.path.join(workdir, "down")
rng = random.Random(42)
names = [f"images/class{c}/img {i:03}.jpg" for c in range(3) for i in range(10)]
names += ["notes/ünïcødé + plus.txt", "notes/empty", "ckpt/shard-0.bin", "ckpt/shard-1.bin"]
sizes = {n: rng.randrange(0, 200_000) for n in names}
sizes["notes/empty"] = 0
sizes["ckpt/shard-0.bin"] = 20 << 20
sizes["ckpt/shard-1.bin"] = (17 << 20) + 3
for name, size in sizes.items():
    path = os.path.join(up, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(rng.randbytes(size))

def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()

s3.create_bucket(Bucket="sync")
for name in names:
    s3.upload_file(os.path.join(up, name), "sync", name, Config=transfer)

listed = {}
for page in s3.get_paginator("list_objects_v2").paginate(Bucket="sync", PaginationConfig={"PageSize": 7}):
    for o in page.get("Contents", []):
        listed[o["Key"]] = o["Size"]
assert listed == sizes, f"listing differs: {sorted(set(listed) ^ set(sizes))}"
prefixes = []
for page in s3.get_paginator("list_objects").paginate(Bucket="sync", Prefix="images/", Delimiter="/"):
    prefixes += [p["Prefix"] for p in page.get("CommonPrefixes", [])]
assert prefixes == ["images/class0/", "images/class1/", "images/class2/"], prefixes

for name in names:
    path = os.path.join(down, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    s3.download_file("sync", name, path, Config=transfer)
    assert sha(path) == sha(os.path.join(up, name)), f"{name} differs"

head = s3.head_object(Bucket="sync", Key="ckpt/shard-0.bin")
assert head["ETag"].strip('"').endswith("-3"), head["ETag"]
url = s3.generate_presigned_url("get_object", Params={"Bucket": "sync", "Key": "notes/ünïcødé + plus.txt"}, ExpiresIn=60)
with urllib.request.urlopen(url) as r:
    assert hashlib.sha256(r.read()).hexdigest() == sha(os.path.join(up, "notes/ünïcødé + plus.txt"))

keys = list(listed)
for i in range(0, len(keys), 10):
    s3.delete_objects(Bucket="sync", Delete={"Objects": [{"Key": k} for k in keys[i:i + 10]]})
assert "Contents" not in s3.list_objects_v2(Bucket="sync")
s3.delete_bucket(Bucket="sync")
print(f"ok {len(names)} files synced up and down")
