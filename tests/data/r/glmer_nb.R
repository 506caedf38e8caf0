# lme4's glmer.nb answers on the overdispersed counts of tests/data/beyond/counts.csv.
#
# Run from the repository root (R 4.2.2, lme4 1.1-31, MASS 7.3-58.2 and jsonlite from Debian bookworm's
# packages: r-base-core r-cran-lme4 r-cran-mass r-cran-jsonlite):
#
#   Rscript tests/data/r/glmer_nb.R > tests/data/glmer_nb_lme4.json
#
# The CSV is read as an R user would (read.csv(stringsAsFactors = TRUE)). For each formula: glmer.nb's
# fit with its defaults (a Poisson glmer, MASS::theta.ml on its fitted values for the starting theta,
# then optimize() of -2 logLik over log(theta) in log(theta0) +- 3 with tol = 5e-5, glmer refitted at
# every theta), its theta, the path of optimize() (theta, -2 logLik of the refit there) as glmer.nb's
# verbose output prints it, and the usual summaries. Also one glmer fit at a fixed theta
# (family = MASS::negative.binomial(theta = 5)): the inner fit alone, without the outer search. And MASS's
# glm.nb of the formula without its random term (what bayeslmm reports beside a negative binomial model
# without random terms).
# The tests never run R: they read the JSON this wrote (tests/test_glmer_nb.py).
suppressPackageStartupMessages({
  library(lme4)
  library(MASS)
  library(jsonlite)
})
d <- read.csv("tests/data/beyond/counts.csv", stringsAsFactors = TRUE)

describe <- function(m) {
  s <- summary(m)
  vc <- as.data.frame(VarCorr(m))
  re <- ranef(m, condVar = TRUE)
  cv <- as.data.frame(re)
  list(
    formula = paste(trimws(deparse(formula(m))), collapse = " "),
    family = family(m)$family,
    logLik = as.numeric(logLik(m)),
    df = attr(logLik(m), "df"),
    AIC = AIC(m),
    BIC = BIC(m),
    deviance = deviance(m),
    nobs = nobs(m),
    fixef = as.list(fixef(m)),
    se = as.list(s$coefficients[, "Std. Error"]),
    z = as.list(s$coefficients[, "z value"]),
    varcorr = lapply(seq_len(nrow(vc)), function(i) list(
      grp = vc$grp[i], var1 = if (is.na(vc$var1[i])) NULL else vc$var1[i],
      var2 = if (is.na(vc$var2[i])) NULL else vc$var2[i], vcov = vc$vcov[i], sdcor = vc$sdcor[i])),
    theta_re = as.list(getME(m, "theta")),
    ranef = lapply(split(cv, cv$grpvar), function(g) list(
      level = as.character(g$grp), term = as.character(g$term), condval = g$condval, condsd = g$condsd)),
    singular = isSingular(m),
    sigma = sigma(m),
    use_sc = attr(VarCorr(m), "useSc")
  )
}

nb_fit <- function(f) {
  out <- capture.output(m <- glmer.nb(f, data = d, verbose = TRUE), type = "output")
  path <- regmatches(out, regexec("^ *[0-9]+: th= *([0-9.eE+-]+), dev= *([0-9.eE+-]+),", out))
  path <- Filter(function(x) length(x) == 3, path)
  # glmer.nb's starting theta, at full precision (its verbose output rounds it): its own steps
  g0 <- suppressMessages(glmer(f, data = d, family = poisson))
  th0 <- lme4:::est_theta(g0, limit = 20, eps = 2 * 5e-5)
  c(describe(m), list(
    call = paste0("glmer.nb(", paste(deparse(f), collapse = " "), ", data = d)"),
    theta = getME(m, "glmer.nb.theta"),
    theta_start = th0,
    nevals = attr(m, "nevals"),
    path_theta = as.numeric(sapply(path, `[`, 2)),
    path_deviance = as.numeric(sapply(path, `[`, 3))
  ))
}

f_offset <- birds ~ temp + offset(log(hours)) + (1 | site)
f_plain <- birds ~ temp + (1 | site)
fixed <- glmer(f_offset, data = d, family = MASS::negative.binomial(theta = 5))
pooled <- glm.nb(birds ~ temp + offset(log(hours)), data = d)

result <- list(
  info = list(
    generated_by = "tests/data/r/glmer_nb.R",
    R = R.version.string,
    lme4 = as.character(packageVersion("lme4")),
    MASS = as.character(packageVersion("MASS")),
    data = "tests/data/beyond/counts.csv, read.csv(stringsAsFactors = TRUE)"
  ),
  models = list(
    nb_offset = nb_fit(f_offset),
    nb_plain = nb_fit(f_plain),
    nb_fixed_theta5 = c(describe(fixed), list(
      call = "glmer(birds ~ temp + offset(log(hours)) + (1 | site), data = d, family = MASS::negative.binomial(theta = 5))",
      theta = 5)),
    glm_nb = list(
      call = "glm.nb(birds ~ temp + offset(log(hours)), data = d)",
      formula = "birds ~ temp + offset(log(hours))",
      theta = pooled$theta,
      theta_se = pooled$SE.theta,
      logLik = as.numeric(logLik(pooled)),
      df = attr(logLik(pooled), "df"),
      AIC = AIC(pooled),
      BIC = BIC(pooled),
      deviance = deviance(pooled),
      fixef = as.list(coef(pooled)),
      se = as.list(summary(pooled)$coefficients[, "Std. Error"])))
)
cat(toJSON(result, auto_unbox = TRUE, digits = NA, pretty = TRUE, null = "null"), "\n")
