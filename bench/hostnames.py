"""The names `egressd gen` puts in SNI, Host and DNS queries unless given a list: what
workloads in a VPC typically reach through an egress firewall (AWS APIs, package and
image registries, OS mirrors, source hosting, telemetry and SaaS endpoints).  Real
names, so that policies written for production lists can be tried on the traffic;
the generator sends every flow to benchmarking addresses (198.18.0.0/15, 2001:db8::/32),
never to these hosts.
"""
from __future__ import annotations

EGRESS_NAMES: tuple[str, ...] = (
    # AWS APIs
    "s3.amazonaws.com", "s3.us-east-1.amazonaws.com", "s3.eu-west-1.amazonaws.com",
    "s3.dualstack.us-west-2.amazonaws.com", "sts.amazonaws.com", "sts.us-east-1.amazonaws.com",
    "ec2.us-east-1.amazonaws.com", "ecr.us-east-1.amazonaws.com",
    "api.ecr.eu-central-1.amazonaws.com", "logs.us-east-1.amazonaws.com",
    "monitoring.us-east-1.amazonaws.com", "ssm.us-east-1.amazonaws.com",
    "ssmmessages.us-east-1.amazonaws.com", "ec2messages.us-east-1.amazonaws.com",
    "secretsmanager.us-east-1.amazonaws.com", "kms.us-east-1.amazonaws.com",
    "dynamodb.us-east-1.amazonaws.com", "sqs.us-east-1.amazonaws.com",
    "sns.us-east-1.amazonaws.com", "lambda.us-east-1.amazonaws.com",
    "kinesis.us-east-1.amazonaws.com", "firehose.us-east-1.amazonaws.com",
    "elasticloadbalancing.us-east-1.amazonaws.com", "autoscaling.us-east-1.amazonaws.com",
    "cloudformation.us-east-1.amazonaws.com", "iam.amazonaws.com", "route53.amazonaws.com",
    "xray.us-east-1.amazonaws.com", "athena.us-east-1.amazonaws.com",
    "prod-us-east-1-starport-layer-bucket.s3.us-east-1.amazonaws.com",
    "amazonlinux-2-repos-us-east-1.s3.dualstack.us-east-1.amazonaws.com",
    "al2023-repos-us-east-1-de612dc2.s3.dualstack.us-east-1.amazonaws.com",
    "d2lzkl7pfhq30w.cloudfront.net", "public.ecr.aws",
    # package and image registries
    "pypi.org", "files.pythonhosted.org", "registry.npmjs.org", "registry.yarnpkg.com",
    "repo.maven.apache.org", "repo1.maven.org", "plugins.gradle.org", "services.gradle.org",
    "proxy.golang.org", "sum.golang.org", "index.crates.io", "static.crates.io",
    "rubygems.org", "index.rubygems.org", "api.nuget.org", "repo.packagist.org",
    "cdn.jsdelivr.net", "unpkg.com", "conda.anaconda.org", "repo.anaconda.com",
    "registry-1.docker.io", "auth.docker.io", "production.cloudflare.docker.com",
    "ghcr.io", "pkg-containers.githubusercontent.com", "quay.io", "cdn01.quay.io",
    "gcr.io", "registry.k8s.io", "us-docker.pkg.dev", "mcr.microsoft.com",
    # OS mirrors
    "deb.debian.org", "security.debian.org", "archive.ubuntu.com", "security.ubuntu.com",
    "ppa.launchpadcontent.net", "dl-cdn.alpinelinux.org", "mirrors.fedoraproject.org",
    "dl.fedoraproject.org", "mirror.centos.org", "cdn.redhat.com", "download.docker.com",
    "packages.microsoft.com", "apt.releases.hashicorp.com", "yum.releases.teleport.dev",
    # source hosting and CI
    "github.com", "api.github.com", "codeload.github.com", "objects.githubusercontent.com",
    "raw.githubusercontent.com", "gitlab.com", "bitbucket.org", "dl.google.com",
    "storage.googleapis.com", "releases.hashicorp.com", "checkpoint-api.hashicorp.com",
    "get.helm.sh", "dl.k8s.io", "nodejs.org", "go.dev", "static.rust-lang.org",
    # telemetry, identity, SaaS
    "api.datadoghq.com", "http-intake.logs.datadoghq.com", "trace.agent.datadoghq.com",
    "collector.newrelic.com", "otlp.nr-data.net", "o123456.ingest.sentry.io",
    "ingest.us.signalfx.com", "http-inputs-acme.splunkcloud.com", "api.honeycomb.io",
    "login.microsoftonline.com", "graph.microsoft.com", "oauth2.googleapis.com",
    "accounts.google.com", "acme.okta.com", "api.stripe.com", "api.twilio.com",
    "hooks.slack.com", "api.pagerduty.com", "events.pagerduty.com", "api.openai.com",
    "api.anthropic.com", "ocsp.digicert.com", "crl3.digicert.com", "ocsp.pki.goog",
    "r10.o.lencr.org", "acme-v02.api.letsencrypt.org", "time.aws.com",
    "ntp.ubuntu.com", "connectivity-check.ubuntu.com", "detectportal.firefox.com",
)
