"""`python -m keras_deepvit` runs the `keras-deepvit` command."""

from keras_deepvit.cli import main

raise SystemExit(main())
