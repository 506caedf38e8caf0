# lme4's answers for the study's model beyond the tutorial, slopes.lmer, on the tutorial's data.
#
# Run from the repository root, with ../shared beside it (R 4.2.2, lme4 1.1-31, lmerTest 3.1-3 and
# jsonlite from Debian bookworm's packages: r-base-core r-cran-lme4 r-cran-lmertest):
#
#   Rscript tests/data/r/dragons_slopes.R > tests/data/dragons_slopes_lme4.json
#
# The preparation is the tutorial's (as in ../shared/reference/README.md). The tests never run R:
# they read the JSON this wrote (tests/test_dragons_slopes.py).
suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
  library(jsonlite)
})
load("../shared/data/dragons.RData")
dragons$bodyLength2 <- as.numeric(scale(dragons$bodyLength))
dragons$sample <- factor(dragons$mountainRange:dragons$site)

f_slopes <- testScore ~ bodyLength2 + (1 + bodyLength2 | mountainRange) + (1 | sample)
f_nested <- testScore ~ bodyLength2 + (1 | mountainRange) + (1 | sample)
ctrl <- lmerControl(optCtrl = list(maxfun = 1e5))

describe <- function(m, profile = FALSE) {
  s <- summary(m)
  vc <- as.data.frame(VarCorr(m))
  re <- ranef(m)
  out <- list(
    formula = paste(trimws(deparse(formula(m))), collapse = " "),
    REML = isREML(m),
    logLik = as.numeric(logLik(m)),
    AIC = AIC(m),
    BIC = BIC(m),
    deviance_or_REMLcrit = if (isREML(m)) as.numeric(REMLcrit(m)) else deviance(m),
    fixef = as.list(fixef(m)),
    se = as.list(s$coefficients[, "Std. Error"]),
    varcorr = lapply(seq_len(nrow(vc)), function(i) list(
      grp = vc$grp[i], var1 = if (is.na(vc$var1[i])) NULL else vc$var1[i],
      var2 = if (is.na(vc$var2[i])) NULL else vc$var2[i], vcov = vc$vcov[i], sdcor = vc$sdcor[i])),
    ranef = lapply(re, function(d) lapply(as.list(d), function(col) setNames(as.list(col), rownames(d)))),
    singular = isSingular(m)
  )
  if (isREML(m)) {
    out$satterthwaite_df <- as.list(s$coefficients[, "df"])
    out$p <- as.list(s$coefficients[, "Pr(>|t|)"])
  }
  if (profile) {
    ci <- suppressWarnings(confint(m, method = "profile", oldNames = FALSE))
    out$profile_ci95 <- lapply(setNames(seq_len(nrow(ci)), rownames(ci)), function(i) unname(ci[i, ]))
  }
  out
}

reml <- lmer(f_slopes, data = dragons, REML = TRUE, control = ctrl)
ml <- lmer(f_slopes, data = dragons, REML = FALSE, control = ctrl)
ml_nested <- lmer(f_nested, data = dragons, REML = FALSE, control = ctrl)
a <- anova(ml_nested, ml, refit = FALSE)

result <- list(
  info = list(
    generated_by = "tests/data/r/dragons_slopes.R",
    R = R.version.string,
    lme4 = as.character(packageVersion("lme4")),
    lmerTest = as.character(packageVersion("lmerTest")),
    data = "shared/data/dragons.RData; bodyLength2 = scale(bodyLength); sample = mountainRange:site"
  ),
  models = list(
    slopes.lmer = describe(reml, profile = TRUE),
    slopes.lmer_ml = describe(ml),
    anova_nested_vs_slopes = list(
      models = c("mixed.lmer2 (ML)", "slopes.lmer (ML)"),
      chisq = a$Chisq[2], df = a$Df[2], p = a$`Pr(>Chisq)`[2], AIC = as.list(setNames(a$AIC, c("nested", "slopes")))
    )
  )
)
cat(toJSON(result, auto_unbox = TRUE, digits = NA, pretty = TRUE, null = "null"), "\n")
