# R² (Nakagawa & Schielzeth; Johnson 2014 for random slopes) of lmer(reaction ~ day + (day|subject)) on
# tests/data/beyond/slopes.csv, by hand from lme4's estimates; run from the repository root: Rscript tests/data/r/r2.R
# Printed with R 4.2.2, lme4 1.1-31: 0.2947371 0.8450837 (used in tests/test_r2.py)
suppressMessages(library(lme4))
d <- read.csv("tests/data/beyond/slopes.csv", stringsAsFactors=TRUE)
m <- lmer(reaction ~ day + (day|subject), d)
X <- model.matrix(m); vf <- var(as.vector(X %*% fixef(m)))
S <- VarCorr(m)$subject; Z <- cbind(1, d$day); vr <- sum(diag(S %*% crossprod(Z)/nrow(Z)))
ve <- sigma(m)^2
cat(vf/(vf+vr+ve), (vf+vr)/(vf+vr+ve), "\n")
