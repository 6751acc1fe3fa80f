"""Create the users, keys, policies and buckets the S3 probe's tests use, in a moto_server
started with INITIAL_NO_AUTH_ACTION_COUNT=3. Prints the keys as JSON on stdout.

  good    allowed s3:* (passes the probe)
  denied  a valid key whose policy denies s3:* (S3_ACCESS_DENIED)

Buckets: "backups" (us-east-1) holding hosts/web1/a.txt, "eu-backups" (eu-west-1).
"""

import json
import sys

import boto3

url = sys.argv[1]


def client(service, key_id="bootstrap", secret="bootstrap", region="us-east-1"):
    return boto3.client(
        service,
        endpoint_url=url,
        region_name=region,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
    )


def policy(effect):
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": effect, "Action": "s3:*" if effect == "Deny" else "*", "Resource": "*"}],
        }
    )


# The three unauthenticated requests moto allows: an admin and its key.
iam = client("iam")
iam.create_user(UserName="admin")
iam.put_user_policy(UserName="admin", PolicyName="all", PolicyDocument=policy("Allow"))
k = iam.create_access_key(UserName="admin")["AccessKey"]
admin = (k["AccessKeyId"], k["SecretAccessKey"])

iam = client("iam", *admin)
keys = {"endpoint": url}
for user, effect in (("good", "Allow"), ("denied", "Deny")):
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName=effect.lower(), PolicyDocument=policy(effect))
    k = iam.create_access_key(UserName=user)["AccessKey"]
    keys[user] = {"id": k["AccessKeyId"], "secret": k["SecretAccessKey"]}

s3 = client("s3", *admin)
s3.create_bucket(Bucket="backups")
s3.put_object(Bucket="backups", Key="hosts/web1/a.txt", Body=b"data\n")
eu = client("s3", *admin, region="eu-west-1")
eu.create_bucket(Bucket="eu-backups", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})

json.dump(keys, sys.stdout)
