"""`python -m spark_infer --model DIR --input PATH --output DIR [...]`: the scoring job.

Through spark-submit (a cluster's master and resources from spark-submit):
    spark-submit "$(python -c 'import spark_infer.__main__ as m; print(m.__file__)')" --model ... --input ... --output ...
"""

import sys

from tfbridge.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
