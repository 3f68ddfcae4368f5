"""The swapper service: stores images in S3-compatible storage and swaps faces via RunPod Serverless.

``python -m services.swapper`` serves ``facegen.v1.SwapperService``;
``python -m services.swapper setup`` prepares the bucket; ``python -m services.swapper doctor``
checks the configuration end to end.
"""
