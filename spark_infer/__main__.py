"""`python -m spark_infer --model DIR --input PATH --output DIR [...]`: the scoring job.

Through spark-submit (a cluster's master and resources from spark-submit):
    spark-submit "$(python -c 'import spark_infer.__main__ as m; print(m.__file__)')" --model ... --input ... --output ...
"""

import argparse
import sys

from spark_infer.job import add_score_arguments, score_job
from tfbridge.jobs import run_job


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m spark_infer", description=__doc__.split("\n\n")[0])
    add_score_arguments(parser)
    args = parser.parse_args(argv)
    return run_job(lambda: score_job(args.model, args.input, args.output, args.master, args.mode, args.id_column,
                                     args.format))


if __name__ == "__main__":
    sys.exit(main())
