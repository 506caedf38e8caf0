# lme4's answers for InstEval's crossed design, y ~ service + (1|s) + (1|d) + (1|dept), on simulated data
# of InstEval's shape (lme4's own InstEval is GPL and not shipped).
#
# Run from the repository root (R 4.2.2, lme4 1.1-31 and jsonlite from Debian bookworm's packages:
# r-base-core r-cran-lme4 r-cran-jsonlite):
#
#   Rscript tests/data/r/insteval.R tests/data/insteval_small.csv profile > tests/data/insteval_lme4.json
#   Rscript tests/data/r/insteval.R FULL.csv                    # the full-size check (not stored)
#
# tests/data/insteval_small.csv is `benchmarks/insteval.py --scale 0.1 --seed 1 --write-csv` (297 students x
# 113 lecturers x 14 departments, 7,295 rows; seed 1 because the default seed's REML fit is singular at this
# size, dept's sd at 0); FULL.csv is the default seed at --scale 1 (2,972 x 1,128 x 14, 73,421 rows). The
# factors are read as character and made factors, as lme4's InstEval has them.
# For REML and ML: estimates, SEs, theta, VarCorr, logLik, the criterion, the seconds lmer took; with
# "profile", confint(method = "profile") and confint(method = "Wald") of the REML fit.
# The tests never run R: they read the JSON this wrote (tests/test_lmer_scale.py).
suppressPackageStartupMessages({
  library(lme4)
  library(jsonlite)
})
args <- commandArgs(TRUE)
d <- read.csv(args[1], colClasses = c(y = "numeric", service = "character", s = "character",
              d = "character", dept = "character"))
for (v in c("service", "s", "d", "dept")) d[[v]] <- factor(d[[v]])
f <- y ~ service + (1 | s) + (1 | d) + (1 | dept)

describe <- function(reml) {
  t0 <- Sys.time()
  m <- lmer(f, d, REML = reml)
  secs <- as.numeric(Sys.time() - t0, units = "secs")
  vc <- as.data.frame(VarCorr(m))
  list(
    m = m,
    out = list(
      REML = reml,
      seconds = secs,
      logLik = as.numeric(logLik(m)),
      criterion = if (reml) as.numeric(REMLcrit(m)) else deviance(m),
      fixef = as.list(fixef(m)),
      se = as.list(sqrt(diag(as.matrix(vcov(m))))),
      theta = as.list(getME(m, "theta")),
      sdcor = setNames(as.list(vc$sdcor), vc$grp),
      singular = isSingular(m),
      feval = m@optinfo$feval
    )
  )
}

reml <- describe(TRUE)
ml <- describe(FALSE)
result <- list(
  info = list(
    generated_by = paste("tests/data/r/insteval.R", paste(args, collapse = " ")),
    R = R.version.string,
    lme4 = as.character(packageVersion("lme4")),
    data = basename(args[1]),
    nobs = nrow(d),
    ngroups = as.list(sapply(d[c("s", "d", "dept")], nlevels))
  ),
  reml = reml$out,
  ml = ml$out
)
if (length(args) > 1 && args[2] == "profile") {
  t0 <- Sys.time()
  ci <- confint(reml$m, method = "profile", oldNames = FALSE)
  result$profile_seconds <- as.numeric(Sys.time() - t0, units = "secs")
  result$profile_ci95 <- lapply(setNames(seq_len(nrow(ci)), rownames(ci)), function(i) unname(ci[i, ]))
  ci <- confint(reml$m, method = "Wald", oldNames = FALSE)
  result$wald_ci95 <- lapply(setNames(seq_len(nrow(ci)), rownames(ci)), function(i) unname(ci[i, ]))
}
cat(toJSON(result, auto_unbox = TRUE, digits = NA, pretty = TRUE, null = "null", na = "null"), "\n")
