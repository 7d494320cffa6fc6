"""How the build runs: the step list, doit's task dicts,
their actions, and the `shardprep` command line. The steps' work lives beside this
package in tasks/ (extract, audit, pull, captions, table, ...)."""
