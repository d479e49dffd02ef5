// Autograd lands here (issue 2).
