"""Performance figures (`make bench`). Each benchmark prints its figure and its ratio against a
reference measured in the same run, so a slow or busy machine moves both alike."""
